//! Lease owner tokens: the name of a process in spool leases and journal files.
//!
//! A token holds the boot id, the pid and the process start time, so a pid reused after
//! a crash or a reboot is not mistaken for the old owner.

/// This process's lease owner name: boot id, pid and process start time, so a pid
/// reused after a crash or a reboot is not mistaken for the old owner.
pub fn owner_token() -> String {
    let pid = std::process::id();
    format!("{}/{}/{}", boot_id(), pid, start_time(pid).unwrap_or(0))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by an owner token still runs.
pub fn owner_alive(token: &str) -> bool {
    let mut parts = token.split('/');
    let (Some(boot), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    boot == boot_id() && start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = owner_token();
        assert!(owner_alive(&me));
        assert!(!owner_alive("x/1/2"));
    }
}
