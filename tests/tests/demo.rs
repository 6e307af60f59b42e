//! `herd demo`, the main job: three real processes form a herd on 127.0.0.1, watch
//! this machine, survive the kill of a node, and all stop on Ctrl-C.
use std::path::Path;
use std::time::Duration;

use herd_tests::demo::Demo;
use herd_tests::herd_bin;
use herd_tests::process::{descendants, signal, wait_exit};
use herd_tests::wait_for;

/// Generous bounds that only catch hangs.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The pids of the demo's nodes 2 and 3, from its first lines.
fn child_pids(stdout: &Path) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(stdout).ok()?;
    let line = text.lines().find(|l| l.contains("a herd of 3"))?;
    let pids: Vec<i32> = line
        .split("(pid ")
        .skip(1)
        .filter_map(|s| s.split(')').next()?.parse().ok())
        .collect();
    (pids.len() == 2).then_some(pids)
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone: its process has ended.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[test]
fn demo_forms_a_herd_takes_over_and_stops_cleanly() {
    herd_bin();
    let mut demo = Demo::start("1s");
    let out = demo.out.clone();

    // Three nodes, all alive, one leader, and the machine scraped.
    let pids = wait_for(FORM_TIMEOUT, "the demo to print its nodes", || {
        child_pids(&out)
    });
    wait_for(
        FORM_TIMEOUT,
        "a herd of 3 watching this machine and each other's",
        || {
            let s = demo.status()?;
            let nodes = s["nodes"].as_array()?;
            let all_alive = nodes.len() == 3 && nodes.iter().all(|n| n["alive"] == true);
            let local = s["targets"]
                .as_array()?
                .iter()
                .find(|t| t["name"] == "local")?
                .clone();
            // Each node's machine becomes a target once that node has joined: the
            // first status after the joins may not list them yet.
            let machines = ["herd-node-1", "herd-node-2", "herd-node-3"]
                .iter()
                .all(|m| {
                    s["targets"]
                        .as_array()
                        .is_some_and(|ts| ts.iter().any(|t| t["name"] == *m))
                });
            (all_alive && machines && s["leader"].is_u64() && local["up"] == true).then_some(())
        },
    );
    // The printed kill line names node 2's pid.
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(
        stdout.contains(&format!("kill -9 {}", pids[0])),
        "{}",
        demo.show()
    );

    // Kill node 2: its targets go to nodes 1 and 3.
    signal(pids[0], libc::SIGKILL);
    wait_for(TAKEOVER_TIMEOUT, "node 2's targets to move", || {
        let s = demo.status()?;
        let node2 = s["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == 2)?
            .clone();
        let owned_by_2 = s["targets"]
            .as_array()?
            .iter()
            .filter(|t| t["owner"] == 2)
            .count();
        let local_up = s["targets"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == "local" && t["up"] == true && t["owner"] != 2);
        (node2["alive"] == false && owned_by_2 == 0 && local_up).then_some(())
    });

    // Ctrl-C: exit 0, node 3 (the surviving child) stops too.
    signal(demo.child.id() as i32, libc::SIGINT);
    let status = wait_exit(&mut demo.child, EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("the demo did not stop on SIGINT\n{}", demo.show()));
    assert!(status.success(), "demo exit {status:?}\n{}", demo.show());
    wait_for(EXIT_TIMEOUT, "node 3 to stop with the demo", || {
        (!alive(pids[1])).then_some(())
    });
    assert!(descendants(demo.child.id() as i32).is_empty());
}
