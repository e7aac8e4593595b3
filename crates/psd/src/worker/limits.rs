//! Per-worker resource limits (`RLimitCPU`, `RLimitMEM`, `RLimitNPROC`,
//! `RLimitNOFILE`), as Apache's directives of these names, and which of
//! them ended a worker.
//!
//! They are set with `prlimit(2)` right after the spawn, beside the
//! scheduling policy, rather than between fork and exec, which would cost
//! every spawn its `posix_spawn` fast path; the worker has barely started.
#![allow(unsafe_code)]

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::config::{RLimit, Resource};

/// Puts `limits` on process `pid`.
pub(crate) fn apply(pid: u32, limits: &[RLimit]) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    for limit in limits {
        let resource = match limit.resource {
            Resource::Cpu => libc::RLIMIT_CPU,
            Resource::Mem => libc::RLIMIT_AS,
            Resource::Nproc => libc::RLIMIT_NPROC,
            Resource::Nofile => libc::RLIMIT_NOFILE,
        };
        let value = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: `value` is a valid rlimit that outlives the call, which
        // only reads it; the old value is not asked for (null).
        let rc = unsafe { libc::prlimit(pid, resource, &value, std::ptr::null_mut()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", limit.resource.directive()),
            ));
        }
    }
    Ok(())
}

/// Which limit, if any, most likely ended a worker that exited with
/// `status`: the kernel's SIGXCPU names `RLimitCPU`; a program that dies
/// of a signal or fails under `RLimitMEM` most often ran out of memory.
pub(crate) fn blame(status: &ExitStatus, limits: &[RLimit]) -> Option<&'static str> {
    let has = |r: Resource| limits.iter().any(|l| l.resource == r);
    if status.signal() == Some(libc::SIGXCPU) && has(Resource::Cpu) {
        return Some("RLimitCPU");
    }
    (!status.success() && has(Resource::Mem)).then_some("RLimitMEM (likely)")
}
