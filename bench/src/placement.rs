//! CPU placement of the benchmark's two sides, and the host description every report carries.
//!
//! On a 2-vCPU VM, waking a thread on the other CPU costs tens of microseconds, more than a whole
//! loopback round trip: both sides share one CPU unless asked to split.

use std::ffi::CStr;
use std::io;

/// Which CPU each side runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub server: usize,
    pub client: usize,
}

impl Placement {
    /// Both on CPU 0, or (`split`) the server on CPU 1 and the client on CPU 0.
    pub fn new(split: bool) -> Self {
        if split {
            Self { server: 1, client: 0 }
        } else {
            Self { server: 0, client: 0 }
        }
    }

    /// Fails if the machine lacks a CPU this placement names.
    pub fn check(&self, online: usize) -> Result<(), String> {
        let highest = self.server.max(self.client);
        if highest >= online {
            return Err(format!(
                "placement {} needs CPU {highest}, but only {online} CPU(s) are online",
                self.describe()
            ));
        }
        Ok(())
    }

    /// As reports print it: `server=0,client=0`.
    pub fn describe(&self) -> String {
        format!("server={},client={}", self.server, self.client)
    }
}

/// Pins the calling thread to `cpu`; threads it spawns afterwards inherit the mask.
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    pin(0, cpu)
}

/// Lets the calling thread run on every online CPU (undoing a pin it inherited); threads it
/// spawns afterwards inherit the mask.
pub fn unpin_current_thread() -> Result<(), String> {
    let online = online_cpus().min(libc::CPU_SETSIZE as usize);
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..online {
        // SAFETY: `cpu` is below CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!("cannot allow CPUs 0-{}: {}", online - 1, io::Error::last_os_error()));
    }
    Ok(())
}

/// Pins thread (or single-threaded process) `tid` to `cpu`; 0 is the calling thread.
pub fn pin(tid: u32, cpu: usize) -> Result<(), String> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| format!("no thread {tid}"))?;
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is beyond the largest CPU set"));
    }
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its size.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!("cannot pin to CPU {cpu}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// CPUs online on the machine (not just those this thread may use).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Kernel release and CPU count, e.g. `linux 6.1.0 2cpu`.
pub fn host() -> String {
    format!("{} {}cpu", kernel_release(), online_cpus())
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain arrays of C chars, for which all zeroes is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid utsname for uname to fill.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname filled `release` with a NUL-terminated string inside the array.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    // SAFETY: as above, for `sysname`.
    let system = unsafe { CStr::from_ptr(uts.sysname.as_ptr()) };
    format!("{} {}", system.to_string_lossy().to_lowercase(), release.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_describes_both_sides() {
        assert_eq!(Placement::new(false).describe(), "server=0,client=0");
        assert_eq!(Placement::new(true).describe(), "server=1,client=0");
    }

    #[test]
    fn split_needs_two_cpus() {
        assert!(Placement::new(false).check(1).is_ok());
        assert!(Placement::new(true).check(2).is_ok());
        assert!(Placement::new(true).check(1).unwrap_err().contains("CPU 1"));
    }

    #[test]
    fn host_names_kernel_and_cpus() {
        let host = host();
        assert!(host.ends_with("cpu") && host.contains(' '), "{host}");
    }
}
