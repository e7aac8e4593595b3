//! What `/proc` tells about a worker process: resident memory and CPU time.

/// A process's resident memory and the CPU time it has used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// The usage of process `pid`, or `None` if it is gone (or `/proc` is not
/// there).
pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let ticks = cpu_ticks(&stat)?;
    Some(Usage {
        rss_bytes: resident_pages * page_size(),
        cpu_seconds: ticks as f64 / clock_ticks_per_second() as f64,
    })
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself: the fields
/// are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as u64)
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |n| n.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 30 0 0 20 0 1 0 123 1000 50";
        assert_eq!(cpu_ticks(line), Some(280));
    }

    #[test]
    fn this_process_has_memory_and_a_dead_one_has_none() {
        let me = usage(std::process::id()).expect("our own /proc entry");
        assert!(me.rss_bytes > 100_000, "{me:?}");
        assert!(me.cpu_seconds >= 0.0);
        assert_eq!(usage(u32::MAX), None);
    }
}
