//! The command line `ps` shows for a process: /proc/PID/cmdline, which the kernel reads from the argv area of the
//! process's memory (between `arg_start` and `arg_end` of /proc/self/stat). A child writes its role there; the
//! supervisor writes its own arguments back with every secret masked, so that a password given in an argument
//! (`--source postgres://app:s3cret@db/...`) is in no process's `ps` line. The supervisor does it right after reading
//! its settings, before it forks or starts a thread; children start from its masked copy and replace it with their
//! title.
//!
//! The area is written through /proc/self/mem, as setproctitle does by pointer: no pointer is forged and no unsafe code
//! is needed. It never grows: what does not fit is cut.

use std::io::{Seek, SeekFrom, Write};

/// Replaces the command line with `title`.
pub fn set(title: &str) -> std::io::Result<()> {
    rewrite(title.as_bytes())
}

/// Writes the process's own arguments back with every secret (what [`super::redact`] masks: the registered secrets
/// and URL passwords) masked. Whether anything was masked.
pub fn mask_secrets() -> std::io::Result<bool> {
    let cmdline = std::fs::read("/proc/self/cmdline")?;
    let args: Vec<&[u8]> = cmdline.strip_suffix(b"\0").unwrap_or(&cmdline).split(|b| *b == 0).collect();
    let mut changed = false;
    let mut out = Vec::with_capacity(cmdline.len());
    for arg in args {
        let text = String::from_utf8_lossy(arg);
        let masked = super::redact::mask(&text);
        if masked != text {
            changed = true;
            out.extend_from_slice(masked.as_bytes());
        } else {
            out.extend_from_slice(arg);
        }
        out.push(0);
    }
    if changed {
        rewrite(&out)?;
    }
    Ok(changed)
}

/// Overwrites the argv area with `bytes`, NUL-filled to its end (its last byte always NUL, so the kernel reads no
/// further).
fn rewrite(bytes: &[u8]) -> std::io::Result<()> {
    // valgrind still reads its own options from that memory after a fork (it then fails at exit); it shows itself
    // through the preload library it injects.
    if std::env::var_os("LD_PRELOAD").is_some_and(|p| p.to_string_lossy().contains("vgpreload")) {
        return Ok(());
    }
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // Fields 48 and 49 of stat are arg_start and arg_end; after the comm the list starts at field 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Ok(());
    };
    let len = end.saturating_sub(start) as usize;
    if len < 2 {
        return Ok(());
    }
    let mut area = vec![0u8; len];
    let n = bytes.len().min(len - 1);
    area[..n].copy_from_slice(&bytes[..n]);
    let mut mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem")?;
    mem.seek(SeekFrom::Start(start))?;
    mem.write_all(&area)
}
