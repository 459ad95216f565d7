//! Serving before ingesting (`http.pipeline_nice`): on a machine whose cores the pipeline keeps
//! busy, the profile API's answers wait behind stage batches and RocksDB's background work.
//! Lowering the scheduling priority of those threads (a higher niceness) lets the kernel run the
//! HTTP listener first whenever it has work; ingestion takes what is left and catches up when
//! the load drops. Threads a lowered thread starts inherit its niceness.

use std::io;

/// Raises the calling thread's niceness to `nice` (0, or a thread already at `nice` or above,
/// is left as it is: a process started niced stays as niced as its operator made it).
pub fn lower_this_thread(nice: i32) -> io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    set_nice(tid, nice)
}

/// Raises the niceness of every thread of this process whose name starts with `prefix` to
/// `nice`, as [`lower_this_thread`] does (RocksDB names its background threads `rocksdb:low`,
/// `rocksdb:high`, ...). Returns how many threads matched.
pub fn lower_threads_named(prefix: &str, nice: i32) -> io::Result<usize> {
    if nice == 0 {
        return Ok(0);
    }
    let mut lowered = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue; // the thread has ended
        };
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        set_nice(tid, nice)?;
        lowered += 1;
    }
    Ok(lowered)
}

fn set_nice(tid: libc::pid_t, nice: i32) -> io::Result<()> {
    // On Linux a thread id names that one thread for {get,set}priority(PRIO_PROCESS, ...).
    // getpriority may return -1 as a niceness, so errno tells an error apart.
    // SAFETY: plain system calls on integers; errno is this thread's.
    let current = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
    };
    if current == -1 && io::Error::last_os_error().raw_os_error() != Some(0) {
        return Err(io::Error::last_os_error());
    }
    if current >= nice {
        // Lowering the niceness would raise the priority (and needs privileges): never.
        return Ok(());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's niceness, from the 19th field of its `stat`.
    fn nice_of(tid: libc::pid_t) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    /// The niceness the tests run at, and one lower in priority (the tests may run niced).
    fn base_and_lower(by: i32) -> (i32, i32) {
        let base = nice_of(unsafe { libc::gettid() });
        (base, (base + by).min(19))
    }

    #[test]
    fn a_thread_lowers_itself_and_what_it_starts_inherits_it() {
        let (base, lower) = base_and_lower(5);
        std::thread::spawn(move || {
            lower_this_thread(lower).unwrap();
            let me = unsafe { libc::gettid() };
            assert_eq!(nice_of(me), lower);
            let inherited = std::thread::spawn(|| nice_of(unsafe { libc::gettid() }))
                .join()
                .unwrap();
            assert_eq!(inherited, lower);
        })
        .join()
        .unwrap();
        // The spawning thread is untouched.
        assert_eq!(nice_of(unsafe { libc::gettid() }), base);
    }

    #[test]
    fn a_thread_already_lower_stays_where_it_is() {
        let (_, lower) = base_and_lower(8);
        let (_, less) = base_and_lower(3);
        std::thread::spawn(move || {
            lower_this_thread(lower).unwrap();
            // Asked for less than it has: no error, and no change.
            lower_this_thread(less).unwrap();
            assert_eq!(nice_of(unsafe { libc::gettid() }), lower);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn threads_are_lowered_by_name() {
        let (_, lower) = base_and_lower(7);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("cdp-prio-test".into())
            .spawn(move || {
                tx.send(unsafe { libc::gettid() }).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        assert_eq!(lower_threads_named("cdp-prio-te", lower).unwrap(), 1);
        assert_eq!(nice_of(tid), lower);
        assert_eq!(lower_threads_named("no-such-thread", 7).unwrap(), 0);
        assert_eq!(lower_threads_named("cdp-prio-te", 0).unwrap(), 0);
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }
}
