//! Broker URLs: `redis://[user:password@]host[:port][/db]` and `rediss://` for TLS.

/// `url` with its password replaced by `***`, for logs and errors.
pub fn elide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; credentials end at its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://***@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::elide_password;

    #[test]
    fn passwords_are_elided() {
        assert_eq!(
            elide_password("redis://user:s3cret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(elide_password("rediss://:pw@h/0"), "rediss://:***@h/0");
        assert_eq!(elide_password("redis://tok@h"), "redis://***@h");
        assert_eq!(elide_password("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(elide_password("redis://u:p@ss@h"), "redis://u:***@h");
    }
}
