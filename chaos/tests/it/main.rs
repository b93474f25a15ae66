//! Each fault is shown to reach its target: packets really dropped, duplicated or lost, counted
//! by the rule that acted on them; processes really frozen, killed and restarted.
//!
//! Network tests re-run themselves inside a private namespace (`unshare --net`), where they
//! can change the firewall without touching the machine's.

mod cli;
mod delay;
mod net;
mod process;

/// Runs the test `name` (its path without the crate) again inside a new private network
/// namespace and checks that it passed there. Returns true in the outer run, which must then
/// return; false inside, where the test body runs (with loopback up).
pub fn reran_in_private_netns(name: &str) -> bool {
    if chaos::netns::reexecuted() {
        assert!(
            chaos::netns::is_private().expect("namespace"),
            "re-run but not in a private namespace"
        );
        chaos::netns::loopback_up().expect("loopback up");
        return false;
    }
    let exe = std::env::current_exe().expect("test binary");
    let args: Vec<String> = [name, "--exact", "--nocapture", "--test-threads=1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = chaos::netns::reexec_command(&exe, &args)
        .output()
        .expect("unshare (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} inside a private network namespace failed (root or user namespaces needed):\n{text}"
    );
    true
}
