//! Priorities: real time for the audio threads (SCHED_FIFO), a nice value for the thread that
//! runs the model, when the service is allowed them.

#[repr(C)]
struct SchedParam {
    sched_priority: i32,
}

const SCHED_FIFO: i32 = 1;

const PRIO_PROCESS: i32 = 0;

unsafe extern "C" {
    fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
    fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    fn getpriority(which: i32, who: u32) -> i32;
    fn gettid() -> i32;
}

/// Puts the calling thread under SCHED_FIFO at `prio` (1..99; 0 does nothing). Returns why
/// not when the system refuses (no CAP_SYS_NICE / LimitRTPRIO).
pub fn set_fifo(prio: u32) -> Result<(), String> {
    if prio == 0 {
        return Ok(());
    }
    let param = SchedParam {
        sched_priority: prio.min(99) as i32,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe { sched_setscheduler(0, SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Sets the calling thread's nice value (-20..19); threads it starts afterwards (the compute
/// threads of ggml and llama.cpp) inherit it. Returns why not when the system refuses (no
/// CAP_SYS_NICE or LimitNICE for a value below the current one).
pub fn set_nice(nice: i32) -> Result<(), String> {
    // SAFETY: plain system calls on the calling thread (Linux applies PRIO_PROCESS with a
    // thread id to that thread alone).
    let rc = unsafe { setpriority(PRIO_PROCESS, gettid() as u32, nice.clamp(-20, 19)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// The calling thread's nice value.
pub fn nice() -> i32 {
    // SAFETY: as above; -1 is also a valid value, and errors cannot occur for the caller.
    unsafe { getpriority(PRIO_PROCESS, gettid() as u32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nice_value_applies_to_the_thread_and_what_it_starts() {
        std::thread::spawn(|| {
            let before = nice();
            // Raising the value (less priority) is always allowed.
            let to = (before + 3).min(19);
            set_nice(to).unwrap();
            assert_eq!(nice(), to);
            assert_eq!(std::thread::spawn(nice).join().unwrap(), to);
        })
        .join()
        .unwrap();
    }
}
