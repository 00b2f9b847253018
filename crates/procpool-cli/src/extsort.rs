//! A small external merge sort of fixed-size records, so that per-job bookkeeping of a
//! batch of any length fits in a few MiB: records are sorted in memory up to a bound, then
//! spilled as sorted runs to unnamed temporary files (they vanish with the process, even
//! after a SIGKILL) and merged, at most [`FAN_IN`] runs at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

/// Runs merged at once: the merge holds one read buffer per run.
const FAN_IN: usize = 32;

/// Read and write buffer of one run.
const RUN_BUF: usize = 64 << 10;

/// A record of fixed size on disk.
pub(crate) trait Record: Ord + Copy {
    const SIZE: usize;
    fn put(&self, out: &mut impl Write) -> io::Result<()>;
    fn get(bytes: &[u8]) -> Self;
}

impl Record for u64 {
    const SIZE: usize = 8;
    fn put(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.to_le_bytes())
    }
    fn get(bytes: &[u8]) -> Self {
        u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

impl Record for (u128, u64) {
    const SIZE: usize = 24;
    fn put(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.0.to_le_bytes())?;
        out.write_all(&self.1.to_le_bytes())
    }
    fn get(bytes: &[u8]) -> Self {
        (
            u128::from_le_bytes(bytes[..16].try_into().expect("16 bytes")),
            u64::from_le_bytes(bytes[16..].try_into().expect("8 bytes")),
        )
    }
}

/// Collects records, then yields them sorted (duplicates kept).
pub(crate) struct Sorter<T> {
    memory: Vec<T>,
    /// Records held in memory before they are spilled as a run.
    bound: usize,
    /// Spilled runs with their level: a run of level `l + 1` merges [`FAN_IN`] of level
    /// `l`, so every record is rewritten only a logarithmic number of times.
    runs: Vec<(u32, File)>,
}

impl<T: Record> Sorter<T> {
    pub(crate) fn new(bound: usize) -> Self {
        Sorter {
            memory: Vec::new(),
            bound: bound.max(1),
            runs: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, record: T) -> io::Result<()> {
        self.memory.push(record);
        if self.memory.len() >= self.bound {
            self.spill()?;
        }
        Ok(())
    }

    /// Every record pushed, in order. Nothing touches the disk when they all fit in memory.
    pub(crate) fn finish(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() {
            self.memory.sort_unstable();
            return Ok(Sorted::Memory(self.memory.into_iter()));
        }
        if !self.memory.is_empty() {
            self.spill()?;
        }
        Ok(Sorted::Merge(Merge::new(
            self.runs.into_iter().map(|(_, f)| f).collect(),
        )?))
    }

    fn spill(&mut self) -> io::Result<()> {
        self.memory.sort_unstable();
        let run = write_run(self.memory.drain(..).map(Ok))?;
        self.runs.push((0, run));
        // Runs are pushed in order of level, the lowest last.
        loop {
            let level = self.runs.last().map_or(0, |r| r.0);
            let same = self.runs.iter().rev().take_while(|r| r.0 == level).count();
            if same < FAN_IN {
                return Ok(());
            }
            let group = self.runs.split_off(self.runs.len() - same);
            let merged = write_run(Merge::<T>::new(
                group.into_iter().map(|(_, f)| f).collect(),
            )?)?;
            self.runs.push((level + 1, merged));
        }
    }
}

fn write_run<T: Record>(records: impl Iterator<Item = io::Result<T>>) -> io::Result<File> {
    let mut file = tempfile::tempfile()?;
    let mut out = BufWriter::with_capacity(RUN_BUF, &mut file);
    for record in records {
        record?.put(&mut out)?;
    }
    out.flush()?;
    drop(out);
    file.rewind()?;
    Ok(file)
}

/// The sorted records: from memory, or merged from runs on disk.
pub(crate) enum Sorted<T> {
    Memory(std::vec::IntoIter<T>),
    Merge(Merge<T>),
}

impl<T: Record> Iterator for Sorted<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        match self {
            Sorted::Memory(it) => it.next().map(Ok),
            Sorted::Merge(m) => m.next(),
        }
    }
}

/// A k-way merge of sorted runs.
pub(crate) struct Merge<T> {
    runs: Vec<BufReader<File>>,
    heads: BinaryHeap<Reverse<(T, usize)>>,
    failed: bool,
}

impl<T: Record> Merge<T> {
    fn new(files: Vec<File>) -> io::Result<Self> {
        let mut merge = Merge {
            runs: files
                .into_iter()
                .map(|f| BufReader::with_capacity(RUN_BUF, f))
                .collect(),
            heads: BinaryHeap::new(),
            failed: false,
        };
        for i in 0..merge.runs.len() {
            merge.advance(i)?;
        }
        Ok(merge)
    }

    /// Puts the next record of run `i`, if any, among the heads.
    fn advance(&mut self, i: usize) -> io::Result<()> {
        let mut bytes = [0u8; 32];
        let bytes = &mut bytes[..T::SIZE];
        match self.runs[i].read_exact(bytes) {
            Ok(()) => {
                self.heads.push(Reverse((T::get(bytes), i)));
                Ok(())
            }
            // Runs are written whole: the end of one falls on a record boundary.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl<T: Record> Iterator for Merge<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        if self.failed {
            return None;
        }
        let Reverse((record, i)) = self.heads.pop()?;
        if let Err(e) = self.advance(i) {
            self.failed = true;
            return Some(Err(e));
        }
        Some(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap deterministic shuffle.
    fn scrambled(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(move |i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (n / 2).max(1))
    }

    #[test]
    fn sorts_in_memory_and_across_levels_of_runs() {
        // In memory only; a few runs; hundreds of runs; a run per record, more than
        // FAN_IN² of them, so that merged runs are merged again.
        for (n, bound) in [(1000, 5000), (1000, 300), (5000, 10), (2000, 1)] {
            let mut sorter = Sorter::new(bound);
            let mut expected: Vec<u64> = scrambled(n).collect();
            for x in &expected {
                sorter.push(*x).unwrap();
            }
            expected.sort_unstable();
            let got: Vec<u64> = sorter.finish().unwrap().map(Result::unwrap).collect();
            assert_eq!(got, expected, "n {n}, bound {bound}");
        }
    }

    #[test]
    fn pairs_sort_by_key_then_line() {
        let mut sorter = Sorter::new(2);
        for r in [
            (7u128 << 100, 3u64),
            (1, 9),
            (7 << 100, 0),
            (1, 2),
            (u128::MAX, 1),
        ] {
            sorter.push(r).unwrap();
        }
        let got: Vec<(u128, u64)> = sorter.finish().unwrap().map(Result::unwrap).collect();
        assert_eq!(
            got,
            [(1, 2), (1, 9), (7 << 100, 0), (7 << 100, 3), (u128::MAX, 1)]
        );
    }
}
