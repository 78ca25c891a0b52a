//! Real-time priority for the audio threads (SCHED_FIFO), when the service is allowed it.

#[repr(C)]
struct SchedParam {
    sched_priority: i32,
}

const SCHED_FIFO: i32 = 1;

unsafe extern "C" {
    fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
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
