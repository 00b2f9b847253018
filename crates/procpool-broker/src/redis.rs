//! [`Broker`] on Redis Streams (Redis >= 7.0). The data model and every script are
//! described in `scripts/lib.lua`; each state change is one script call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use procpool_core::TaskError;
use procpool_proto::Encoding;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script, ScriptInvocation, Value};
use uuid::Uuid;

use crate::broker::{
    AgentInfo, Broker, Cancelled, Claimed, Control, Fetched, Lease, NewTask, ReadEvent, Renewal,
    Submitted, TakenResults,
};
use crate::errors::BrokerError;
use crate::url::elide_password;
use crate::wire::{self, Event};

const GROUP: &str = "agents";

/// Inbox entries read at most per call.
const NOTICES_PER_READ: usize = 4096;

/// The scripts, each with the shared helpers prepended, hashed once.
struct Scripts {
    submit: Script,
    start: Script,
    emit: Script,
    complete: Script,
    release: Script,
    renew: Script,
    reap: Script,
    autoclaim: Script,
    cancel: Script,
    take: Script,
    handback: Script,
}

impl Scripts {
    fn load() -> Self {
        let lib = include_str!("../scripts/lib.lua");
        let s = |body: &str| Script::new(&format!("{lib}\n{body}"));
        Scripts {
            submit: s(include_str!("../scripts/submit.lua")),
            start: s(include_str!("../scripts/start.lua")),
            emit: s(include_str!("../scripts/emit.lua")),
            complete: s(include_str!("../scripts/complete.lua")),
            release: s(include_str!("../scripts/release.lua")),
            renew: s(include_str!("../scripts/renew.lua")),
            reap: s(include_str!("../scripts/reap.lua")),
            autoclaim: s(include_str!("../scripts/autoclaim.lua")),
            cancel: s(include_str!("../scripts/cancel.lua")),
            take: s(include_str!("../scripts/take.lua")),
            handback: s(include_str!("../scripts/handback.lua")),
        }
    }
}

/// A Redis broker: one namespace of one Redis server.
pub struct RedisBroker {
    client: redis::Client,
    url: String,
    /// `{ns}`: the hash tag that keeps the namespace in one Cluster slot.
    prefix: String,
    conn: ConnectionManager,
    /// The blocking reads (XREAD, XREADGROUP), each on a connection of its own: a
    /// blocked command would stall every other command on a shared one.
    events_conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    fetch_conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    scripts: Scripts,
    max_frame: usize,
    /// Which of an agent's queues its next fetch reads first (turns, so none starves).
    turn: AtomicUsize,
    /// A read found entries in several of the agent's queues: until they are drained,
    /// its fetches take exactly their count (the `take` script) instead of reading up to
    /// the count from each queue and handing back the rest.
    backlog: AtomicBool,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long connecting may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl RedisBroker {
    /// Connects to `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://` for
    /// TLS, with `#insecure` at the end to skip certificate checks) for namespace
    /// `namespace`, and checks the server answers. Fails within a few seconds when it
    /// does not; the error names the URL with its password elided.
    pub async fn connect(
        url: &str,
        namespace: &str,
        max_frame: usize,
    ) -> Result<RedisBroker, BrokerError> {
        let shown = elide_password(url);
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            return Err(BrokerError::Url {
                url: shown,
                message: format!("namespace {namespace:?} must be non-empty, without braces"),
            });
        }
        // rustls picks no crypto provider by itself when a build could hold two; an
        // application that installed its own keeps it (hence the ignored error).
        #[cfg(target_os = "linux")]
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Redis's own parse errors may quote the URL: replace them with ours.
        let client = redis::Client::open(url).map_err(|_| BrokerError::Url {
            url: shown.clone(),
            message: "not a redis:// or rediss:// URL".into(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let unreachable = |message: String| BrokerError::Connect {
            url: shown.clone(),
            message,
        };
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(RedisBroker {
            client,
            url: shown,
            prefix: format!("{{{namespace}}}"),
            conn,
            events_conn: tokio::sync::Mutex::new(None),
            fetch_conn: tokio::sync::Mutex::new(None),
            scripts: Scripts::load(),
            max_frame,
            turn: AtomicUsize::new(0),
            backlog: AtomicBool::new(false),
        })
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// The cancel script for `id`; `inbox` is the submitter's inbox key, empty for an
    /// operator's cancel.
    async fn run_cancel(&self, id: Uuid, inbox: &str) -> Result<Cancelled, BrokerError> {
        let id = id.to_string();
        let done: i64 = self
            .scripts
            .cancel
            .prepare_invoke()
            .key(self.key("t", &id))
            .key(self.key("w", &id))
            .arg(&self.prefix)
            .arg(&id)
            .arg(inbox)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match done {
            1 | 2 => Cancelled::Cancelled,
            3 => Cancelled::LetGo,
            _ => Cancelled::NotLive,
        })
    }

    /// The queue of the tasks named `name`.
    fn queue(&self, name: &str) -> String {
        format!("{}:q:{name}", self.prefix)
    }

    /// The set of the task names that have a queue.
    fn names_set(&self) -> String {
        format!("{}:names", self.prefix)
    }

    fn agents_set(&self) -> String {
        format!("{}:agents", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The entries of an XREADGROUP-shaped reply over the queues.
    fn fetched(&self, reply: &Value) -> Vec<Fetched> {
        let queue_prefix = format!("{}:q:", self.prefix);
        streams(reply)
            .into_iter()
            .filter_map(|(key, entries)| {
                Some((key.strip_prefix(&queue_prefix)?.to_owned(), entries))
            })
            .flat_map(|(name, entries)| {
                entries.into_iter().map(move |(entry, fields)| {
                    let task = fields
                        .iter()
                        .find(|(k, _)| k == b"id")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok())
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .ok_or_else(|| format!("queue entry {entry} has no task id"));
                    Fetched {
                        name: name.clone(),
                        entry,
                        task,
                    }
                })
            })
            .collect()
    }

    /// After a failed read: a missing consumer group (the broker restarted without its
    /// data) is made again and the read comes back empty; any other error is returned.
    async fn regroup(&self, names: &[String], e: BrokerError) -> Result<Vec<Fetched>, BrokerError> {
        match e {
            BrokerError::Command(m) if m.contains("NOGROUP") => {
                self.prepare(names).await?;
                Ok(Vec::new())
            }
            other => Err(other),
        }
    }

    /// `script` on an entry this agent read: the keys of its queue and its task, then the
    /// namespace prefix, the task id and the entry id, as the start and hand-back scripts
    /// take them (a script's own arguments follow).
    fn on_entry<'a>(
        &self,
        script: &'a Script,
        fetched: &Fetched,
        id: Uuid,
    ) -> ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(self.queue(&fetched.name))
            .key(self.key("t", id))
            .arg(&self.prefix)
            .arg(id.to_string())
            .arg(&fetched.entry);
        call
    }

    /// Puts a read entry this agent will not start back at the end of its queue.
    async fn hand_back(&self, fetched: &Fetched, id: Uuid) -> Result<(), BrokerError> {
        let _: i64 = self
            .on_entry(&self.scripts.handback, fetched, id)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Runs a blocking command on its own connection (made on first use, dropped after
    /// an error so the next call reconnects). `block` bounds the wait for a reply.
    async fn blocking(
        &self,
        slot: &tokio::sync::Mutex<Option<MultiplexedConnection>>,
        cmd: redis::Cmd,
        block: Duration,
    ) -> Result<Value, BrokerError> {
        let mut guard = slot.lock().await;
        if guard.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(None);
            *guard = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        let Some(conn) = guard.as_mut() else {
            return Err(BrokerError::Command("no connection".into()));
        };
        match tokio::time::timeout(block + Duration::from_secs(5), cmd.query_async(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *guard = None;
                Err(e.into())
            }
            Err(_) => {
                *guard = None;
                Err(BrokerError::Command(
                    "a blocking read did not return".into(),
                ))
            }
        }
    }
}

fn encoding_tag(e: Encoding) -> &'static str {
    match e {
        Encoding::Json => "j",
        Encoding::Bincode => "b",
    }
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bulk(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// A stream entry's fields, in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Stream entries as `[(id, [(field, value)])]`, from an XRANGE-shaped array. An entry
/// of another shape is skipped.
fn entries(v: &Value) -> Vec<(String, Fields)> {
    array(v)
        .iter()
        .filter_map(|e| {
            let [id, fields] = array(e) else { return None };
            let fields = array(fields)
                .chunks_exact(2)
                .filter_map(|kv| Some((bulk(&kv[0])?.to_vec(), bulk(&kv[1])?.to_vec())))
                .collect();
            Some((text(id)?, fields))
        })
        .collect()
}

/// XREAD/XREADGROUP replies as `[(stream key, entries)]` (RESP2 arrays or RESP3 maps).
fn streams(v: &Value) -> Vec<(String, Vec<(String, Fields)>)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, e)| Some((text(k)?, entries(e))))
            .collect(),
        other => array(other)
            .iter()
            .filter_map(|s| {
                let [key, e] = array(s) else { return None };
                Some((text(key)?, entries(e)))
            })
            .collect(),
    }
}

fn ids_of(v: &Value) -> Vec<Uuid> {
    array(v)
        .iter()
        .filter_map(|x| Uuid::parse_str(&text(x)?).ok())
        .collect()
}

impl Broker for RedisBroker {
    fn url(&self) -> &str {
        &self.url
    }

    async fn submit(&self, task: &NewTask<'_>, inbox: &str) -> Result<Submitted, BrokerError> {
        let id = task.id.to_string();
        let reply: String = self
            .scripts
            .submit
            .prepare_invoke()
            .key(self.key("t", &id))
            .key(self.queue(task.name))
            .key(self.key("e", &id))
            .key(self.key("n", inbox))
            .key(self.key("w", &id))
            .arg(&self.prefix)
            .arg(&id)
            .arg(task.name)
            .arg(task.args)
            .arg(encoding_tag(task.encoding))
            .arg(task.lost_budget.max(1))
            .arg(task.result_ttl.as_millis().max(1) as u64)
            .arg(task.timeout.map_or(0, |d| d.as_millis().max(1) as u64))
            .arg(task.retries.map_or(-1, i64::from))
            .arg(procpool_proto::PROTOCOL_VERSION)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(if reply == "attach" {
            Submitted::Attached
        } else {
            Submitted::New
        })
    }

    async fn cancel(&self, id: Uuid, inbox: &str) -> Result<Cancelled, BrokerError> {
        self.run_cancel(id, &self.key("n", inbox)).await
    }

    async fn cancel_for_all(&self, id: Uuid) -> Result<Cancelled, BrokerError> {
        self.run_cancel(id, "").await
    }

    async fn send_message(&self, id: Uuid, bytes: Vec<u8>) -> Result<(), BrokerError> {
        let inbox = self.key("in", id);
        let _: Value = redis::pipe()
            .atomic()
            .rpush(&inbox, bytes)
            .pexpire(&inbox, 3_600_000)
            .publish(format!("{}:ctl", self.prefix), format!("m {id}"))
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn read_notices(
        &self,
        inbox: &str,
        cursor: &mut String,
        block: Option<Duration>,
    ) -> Result<Vec<Uuid>, BrokerError> {
        let inbox = self.key("n", inbox);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(NOTICES_PER_READ);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&inbox).arg(&*cursor);
        let reply = self
            .blocking(&self.events_conn, cmd, block.unwrap_or_default())
            .await?;
        let mut ids = Vec::new();
        for (_, entries) in streams(&reply) {
            if let Some((last, _)) = entries.last() {
                cursor.clone_from(last);
            }
            ids.extend(entries.iter().filter_map(|(_, fields)| {
                let (_, id) = fields.iter().find(|(k, _)| k == b"t")?;
                Uuid::parse_str(std::str::from_utf8(id).ok()?).ok()
            }));
        }
        Ok(ids)
    }

    async fn read_events(
        &self,
        cursors: &[(Uuid, String)],
        count: usize,
    ) -> Result<Vec<ReadEvent>, BrokerError> {
        if cursors.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count).arg("STREAMS");
        for (id, _) in cursors {
            cmd.arg(self.key("e", id));
        }
        for (_, cursor) in cursors {
            cmd.arg(cursor);
        }
        let reply: Value = cmd.query_async(&mut self.conn()).await?;
        let event_prefix = format!("{}:e:", self.prefix);
        let mut out = Vec::new();
        for (key, entries) in streams(&reply) {
            let Some(task) = key
                .strip_prefix(&event_prefix)
                .and_then(|id| Uuid::parse_str(id).ok())
            else {
                continue;
            };
            for (cursor, fields) in entries {
                out.push(ReadEvent {
                    task,
                    cursor,
                    event: wire::decode_event(&fields, self.max_frame),
                });
            }
        }
        Ok(out)
    }

    async fn known(&self, ids: &[Uuid]) -> Result<Vec<bool>, BrokerError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.exists(self.key("t", id));
        }
        Ok(pipe.query_async(&mut self.conn()).await?)
    }

    async fn take_results(&self, ids: &[Uuid]) -> TakenResults {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("GETDEL").arg(self.key("r", id));
        }
        let stored: Vec<Option<Vec<u8>>> = pipe.query_async(&mut self.conn()).await?;
        Ok(stored
            .into_iter()
            .map(|s| {
                s.map(|s| {
                    if s.len() > self.max_frame + 4 {
                        Err(TaskError::Protocol {
                            message: format!(
                                "a stored result of {} bytes exceeds the frame cap",
                                s.len()
                            ),
                        })
                    } else {
                        wire::decode_result(&s)
                    }
                })
            })
            .collect())
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, BrokerError> {
        let mut conn = self.conn();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.agents_set())
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for id in &ids {
            cmd.arg(self.key("a", id));
        }
        let infos: Vec<Option<Vec<u8>>> = cmd.query_async(&mut conn).await?;
        Ok(infos
            .into_iter()
            .flatten()
            .filter(|b| b.len() <= self.max_frame)
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect())
    }

    async fn prepare(&self, names: &[String]) -> Result<(), BrokerError> {
        let mut conn = self.conn();
        if !names.is_empty() {
            let _: Value = redis::cmd("SADD")
                .arg(self.names_set())
                .arg(names)
                .query_async(&mut conn)
                .await?;
        }
        for name in names {
            let made: Result<Value, _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.queue(name))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match made {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => drop(other?),
            }
        }
        Ok(())
    }

    async fn fetch(
        &self,
        agent: &str,
        names: &[String],
        count: usize,
        block: Duration,
    ) -> Result<Vec<Fetched>, BrokerError> {
        if names.is_empty() {
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        let count = count.max(1);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % names.len();
        let queues: Vec<String> = names[turn..]
            .iter()
            .chain(&names[..turn])
            .map(|n| self.queue(n))
            .collect();
        if self.backlog.load(Ordering::Relaxed) {
            // Several queues hold entries: exactly `count` of them, queue after queue.
            let mut take = self.scripts.take.prepare_invoke();
            for q in &queues {
                take.key(q);
            }
            take.arg(agent).arg(count);
            let taken: Result<Value, BrokerError> = take
                .invoke_async(&mut self.conn())
                .await
                .map_err(Into::into);
            let fetched = match taken {
                Ok(reply) => self.fetched(&reply),
                Err(e) => return self.regroup(names, e).await,
            };
            if fetched.len() < count {
                // Fewer than asked for: every queue was drained.
                self.backlog.store(false, Ordering::Relaxed);
            }
            if !fetched.is_empty() {
                return Ok(fetched);
            }
        }
        // What is waiting, or else the next entry in any of the queues: one round trip,
        // as with a single queue.
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(agent)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&queues);
        for _ in &queues {
            cmd.arg(">");
        }
        let mut fetched = match self.blocking(&self.fetch_conn, cmd, block).await {
            Ok(reply) => self.fetched(&reply),
            Err(e) => return self.regroup(names, e).await,
        };
        // COUNT applies per queue: what is beyond `count` goes back for any agent, and
        // the next reads take exactly `count` until the queues are drained.
        if fetched.len() > count {
            self.backlog.store(true, Ordering::Relaxed);
            for extra in fetched.split_off(count) {
                let handed = match extra.task {
                    Ok(id) => self.hand_back(&extra, id).await,
                    Err(_) => self.discard(&extra).await,
                };
                if let Err(e) = handed {
                    // It stays pending here: the autoclaim backstop requeues it.
                    tracing::warn!(entry = extra.entry, error = %e, "could not hand back an entry read beyond the free slots");
                }
            }
        }
        Ok(fetched)
    }

    async fn start(
        &self,
        agent: &str,
        fetched: &Fetched,
        id: Uuid,
    ) -> Result<Option<Claimed>, BrokerError> {
        let reply: Value = self
            .on_entry(&self.scripts.start, fetched, id)
            .arg(agent)
            .arg(self.max_frame)
            .invoke_async(&mut self.conn())
            .await?;
        let fields = array(&reply);
        let [att, name, args, enc, tmo, rty, proto, messages] = fields else {
            return Ok(None);
        };
        let Some(attempt) = int(att).and_then(|n| u32::try_from(n).ok()) else {
            return Err(BrokerError::Data(format!("task {id}: no attempt number")));
        };
        let mut claimed = Claimed {
            attempt,
            name: String::new(),
            args: Vec::new(),
            encoding: Encoding::Json,
            timeout: None,
            retries: int(rty).and_then(|n| u32::try_from(n).ok()),
            protocol: int(proto).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            problem: None,
            messages: array(messages)
                .iter()
                .filter_map(bulk)
                .filter(|m| m.len() <= self.max_frame)
                .map(<[u8]>::to_vec)
                .collect(),
        };
        // A malformed task still holds its attempt: it ends with a protocol error.
        let problem = (|| {
            claimed.name = text(name).ok_or("its name is not UTF-8")?;
            let args = bulk(args).ok_or("it has no arguments")?;
            if args.len() > self.max_frame {
                return Err("its arguments exceed the frame cap");
            }
            claimed.args = args.to_vec();
            claimed.encoding = match bulk(enc) {
                Some(b"b") => Encoding::Bincode,
                Some(b"j") => Encoding::Json,
                _ => return Err("its encoding is unknown"),
            };
            let millis = int(tmo).unwrap_or(0);
            claimed.timeout = (millis > 0).then(|| Duration::from_millis(millis as u64));
            Ok(())
        })();
        if let Err(p) = problem {
            claimed.problem = Some(format!("malformed task on the broker: {p}"));
        }
        Ok(Some(claimed))
    }

    async fn discard(&self, fetched: &Fetched) -> Result<(), BrokerError> {
        let queue = self.queue(&fetched.name);
        let entry = [&fetched.entry];
        let _: Value = redis::pipe()
            .atomic()
            .xack(&queue, GROUP, &entry)
            .xdel(&queue, &entry)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn emit(&self, agent: &str, lease: &Lease, event: &Event) -> Result<bool, BrokerError> {
        let (kind, data): (&str, Vec<u8>) = match event {
            Event::Started { pid, .. } => ("started", pid.to_string().into_bytes()),
            Event::Progress { fraction, message } => (
                "progress",
                serde_json::json!({"f": fraction, "m": message})
                    .to_string()
                    .into_bytes(),
            ),
            Event::Message(bytes) => ("message", bytes.clone()),
            _ => return Err(BrokerError::Data("not an event of a running task".into())),
        };
        let id = lease.id.to_string();
        let applied: i64 = self
            .scripts
            .emit
            .prepare_invoke()
            .key(self.key("t", &id))
            .arg(&self.prefix)
            .arg(&id)
            .arg(agent)
            .arg(lease.attempt)
            .arg(kind)
            .arg(data)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(applied == 1)
    }

    async fn complete(
        &self,
        agent: &str,
        lease: &Lease,
        outcome: &Result<bytes::Bytes, TaskError>,
    ) -> Result<bool, BrokerError> {
        let (status, value): (&str, Vec<u8>) = match outcome {
            Ok(bytes) => ("ok", bytes.to_vec()),
            Err(e) => ("err", wire::encode_error(e).into_bytes()),
        };
        let id = lease.id.to_string();
        let applied: i64 = self
            .scripts
            .complete
            .prepare_invoke()
            .key(self.key("t", &id))
            .arg(&self.prefix)
            .arg(&id)
            .arg(agent)
            .arg(lease.attempt)
            .arg(status)
            .arg(value)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(applied == 1)
    }

    async fn release(&self, agent: &str, lease: &Lease) -> Result<bool, BrokerError> {
        let id = lease.id.to_string();
        let applied: i64 = self
            .scripts
            .release
            .prepare_invoke()
            .key(self.key("t", &id))
            .arg(&self.prefix)
            .arg(&id)
            .arg(agent)
            .arg(lease.attempt)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(applied == 1)
    }

    async fn renew(
        &self,
        info: &AgentInfo,
        ttl: Duration,
        leases: &[Lease],
    ) -> Result<Renewal, BrokerError> {
        let info_json =
            serde_json::to_string(info).map_err(|e| BrokerError::Data(e.to_string()))?;
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(self.key("a", &info.id))
            .key(self.agents_set())
            .arg(&self.prefix)
            .arg(&info.id)
            .arg(ttl.as_millis() as u64)
            .arg(info_json);
        for l in leases {
            inv.arg(l.id.to_string()).arg(&l.entry).arg(l.attempt);
        }
        let reply: Value = inv.invoke_async(&mut self.conn()).await?;
        let parts = array(&reply);
        Ok(Renewal {
            lost: parts.first().map(ids_of).unwrap_or_default(),
            cancelled: parts.get(1).map(ids_of).unwrap_or_default(),
        })
    }

    async fn reap(&self, me: &str) -> Result<usize, BrokerError> {
        let mut conn = self.conn();
        let agents: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.agents_set())
            .query_async(&mut conn)
            .await?;
        let mut handled = 0;
        for agent in agents.iter().filter(|a| *a != me) {
            let n: i64 = self
                .scripts
                .reap
                .prepare_invoke()
                .key(self.names_set())
                .key(self.agents_set())
                .key(self.key("a", agent))
                .arg(&self.prefix)
                .arg(agent)
                .invoke_async(&mut conn)
                .await?;
            handled += usize::try_from(n).unwrap_or(0);
        }
        Ok(handled)
    }

    async fn autoclaim(
        &self,
        me: &str,
        names: &[String],
        min_idle: Duration,
        cursors: &mut [String],
    ) -> Result<usize, BrokerError> {
        if names.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.autoclaim.prepare_invoke();
        for name in names {
            inv.key(self.queue(name));
        }
        inv.arg(&self.prefix)
            .arg(me)
            .arg(min_idle.as_millis() as u64);
        for cursor in cursors.iter() {
            inv.arg(cursor);
        }
        let reply: Vec<Value> = inv.invoke_async(&mut self.conn()).await?;
        for (cursor, next) in cursors.iter_mut().zip(reply.iter().skip(1)) {
            *cursor = text(next).unwrap_or_else(|| "0-0".into());
        }
        Ok(reply
            .first()
            .and_then(int)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0))
    }

    async fn take_messages(&self, id: Uuid) -> Result<Vec<Vec<u8>>, BrokerError> {
        let inbox = self.key("in", id);
        let (messages, _): (Vec<Vec<u8>>, Value) = redis::pipe()
            .atomic()
            .lrange(&inbox, 0, -1)
            .del(&inbox)
            .query_async(&mut self.conn())
            .await?;
        Ok(messages
            .into_iter()
            .filter(|m| m.len() <= self.max_frame)
            .collect())
    }

    async fn control(&self) -> Result<BoxStream<'static, Control>, BrokerError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(format!("{}:ctl", self.prefix)).await?;
        Ok(pubsub
            .into_on_message()
            .filter_map(|msg| async move {
                let payload = std::str::from_utf8(msg.get_payload_bytes()).ok()?;
                let (kind, id) = payload.split_once(' ')?;
                let id = Uuid::parse_str(id).ok()?;
                match kind {
                    "c" => Some(Control::Cancel(id)),
                    "m" => Some(Control::Message(id)),
                    _ => None,
                }
            })
            .boxed())
    }

    async fn leave(&self, agent: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn();
        let _: Value = redis::cmd("DEL")
            .arg(self.key("a", agent))
            .query_async(&mut conn)
            .await?;
        // Reaping itself hands back whatever it read and did not start.
        let _: i64 = self
            .scripts
            .reap
            .prepare_invoke()
            .key(self.names_set())
            .key(self.agents_set())
            .key(self.key("a", agent))
            .arg(&self.prefix)
            .arg(agent)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
