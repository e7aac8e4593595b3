//! What `/proc` tells about a worker process: resident memory and CPU time.

/// A process's resident memory and the CPU time it has used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// The usage of process `pid`, or `None` if it is gone (or `/proc` is not
/// there). One file read: listing 10,000 sessions reads 10,000 of them.
pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (ticks, resident_pages) = parse_stat(&stat)?;
    Some(Usage {
        rss_bytes: resident_pages * page_size(),
        cpu_seconds: ticks as f64 / clock_ticks_per_second() as f64,
    })
}

/// `utime + stime` (clock ticks) and `rss` (pages) from a `/proc/PID/stat`
/// line. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself: the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3; utime, stime are 14 and 15, rss 24.
    let fields: Vec<&str> = rest.split_whitespace().take(22).collect();
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((number(14)? + number(15)?, number(24)?))
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
    fn cpu_time_and_memory_are_read_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 30 0 0 20 0 1 0 123 1000 50 18446744073709551615";
        assert_eq!(parse_stat(line), Some((280, 50)));
    }

    #[test]
    fn this_process_has_memory_and_a_dead_one_has_none() {
        let me = usage(std::process::id()).expect("our own /proc entry");
        assert!(me.rss_bytes > 100_000, "{me:?}");
        assert!(me.cpu_seconds >= 0.0);
        assert_eq!(usage(u32::MAX), None);
    }
}
