//! The CPU scheduling policy of worker processes (`WorkerSchedulingPolicy`).
//!
//! The one place psd calls libc directly: neither the standard library nor
//! `nix` offers `sched_setscheduler(2)`.
#![allow(unsafe_code)]

use crate::config::SchedulingPolicy;

/// Puts the process `pid` under `policy`. Switching among the normal
/// policies (other, batch, idle) needs no privilege for one's own children.
pub(crate) fn set_policy(pid: u32, policy: SchedulingPolicy) -> std::io::Result<()> {
    let policy = match policy {
        SchedulingPolicy::Other => libc::SCHED_OTHER,
        SchedulingPolicy::Batch => libc::SCHED_BATCH,
        SchedulingPolicy::Idle => libc::SCHED_IDLE,
    };
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // The normal policies take priority 0.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives the
    // call, which only reads it; a wrong or exited pid is an error return.
    let rc = unsafe { libc::sched_setscheduler(pid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_runs_under_the_policy_it_was_given() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        set_policy(child.id(), SchedulingPolicy::Batch).unwrap();
        // Field 41 of /proc/PID/stat is the policy (3 = SCHED_BATCH).
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy: i32 = after_name.split(' ').nth(38).unwrap().parse().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(policy, libc::SCHED_BATCH);
    }
}
