//! remote_write against the real receivers: VictoriaMetrics (Debian's
//! `victoria-metrics`) and Prometheus with its remote-write receiver on. Real `herd
//! node` processes scrape local targets; what the receivers hold is compared,
//! sample by sample, with what `herd query` answers.
//!
//! What is tried to be broken: names, labels and values as the Prometheus face
//! shows them; nothing lost while the receiver is down, when the owner holding a
//! backlog is killed with `kill -9`, or across the takeover of its target (the
//! dead owner's backlog goes out when it comes back). The bounds only catch hangs.
use std::collections::BTreeSet;
use std::time::Duration;

use herd_tests::cluster::Cluster;
use herd_tests::prometheus::Prometheus;
use herd_tests::victoria::VictoriaMetrics;
use herd_tests::{local_target, now_ms, phase, wait_for, wait_until, Herd, HerdOptions};

const BOUND: Duration = Duration::from_secs(60);

fn remote(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[remote_write]]\nname = \"{name}\"\nurl = \"{url}\"\nmetrics = [\"cpu.*\", \"mem.*\"]\n\
         labels = {{ herd = \"test\" }}\nbackoff_max = \"1s\"\n{extra}\n"
    )
}

/// Every (ms, value) of `metric` of `target` that the herd holds up to `until_ms`.
fn herd_points(herd: &Herd, target: &str, metric: &str, until_ms: i64) -> BTreeSet<(i64, u64)> {
    herd.points(target, metric)
        .into_iter()
        .filter(|p| p.0 <= until_ms)
        .map(|(t, v)| (t, v.to_bits()))
        .collect()
}

#[test]
fn samples_reach_victoriametrics_and_prometheus_as_the_face_names_them() {
    phase!("VictoriaMetrics and Prometheus as receivers; one node, one local target");
    let vm = VictoriaMetrics::start();
    let prom = Prometheus::receiver();
    let fleet = format!(
        "{}{}{}",
        local_target("rw-1", "1s"),
        remote("vm", &vm.write_url(), ""),
        remote("prom", &prom.write_url(), "")
    );
    let herd = Herd::start(HerdOptions::default().fleet(&fleet));
    wait_for(BOUND, "ten cpu samples in the herd", || {
        (herd.points("rw-1", "cpu.used_pct").len() >= 10).then_some(())
    });

    phase!("VictoriaMetrics holds every cpu sample the herd holds, named and labelled");
    let until = now_ms() - 3000;
    let want = herd_points(&herd, "rw-1", "cpu.used_pct", until);
    let series = wait_for(BOUND, "VictoriaMetrics has them all", || {
        let s = vm.export("{__name__=\"herd_cpu_used_pct\",target=\"rw-1\"}");
        let got: BTreeSet<(i64, u64)> = s
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(t, v)| (*t, v.to_bits())))
            .collect();
        want.is_subset(&got).then_some(s)
    });
    assert_eq!(series.len(), 1, "one series: {series:?}");
    let labels = &series[0].0;
    assert_eq!(
        labels.get("herd").map(String::as_str),
        Some("test"),
        "{labels:?}"
    );
    assert_eq!(labels.get("target").map(String::as_str), Some("rw-1"));
    // Only the selected metrics go.
    let others = vm.export("{__name__=~\"herd_(disk|load|net)_.*\"}");
    assert!(others.is_empty(), "not selected, not sent: {others:?}");
    let mem = vm.export("{__name__=~\"herd_mem_.*\",target=\"rw-1\"}");
    assert!(!mem.is_empty(), "mem.* is selected");

    phase!("Prometheus (remote-write receiver) holds them too");
    wait_for(BOUND, "Prometheus has them all", || {
        let s = prom.raw_samples("herd_cpu_used_pct{target=\"rw-1\",herd=\"test\"}");
        let got: BTreeSet<(i64, u64)> = s
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(t, v)| (*t, v.to_bits())))
            .collect();
        want.is_subset(&got).then_some(())
    });
    let text = herd.metrics_text();
    assert!(
        text.contains("herd_remote_write_sent_samples_total{remote=\"vm\"}"),
        "/metrics counts what each remote took:\n{}",
        text.lines()
            .filter(|l| l.contains("remote_write"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn nothing_is_lost_while_the_receiver_is_down_nor_when_the_owner_with_a_backlog_is_killed() {
    phase!("VictoriaMetrics; three nodes; six local targets");
    let mut vm = VictoriaMetrics::start();
    let names: Vec<String> = (1..=6).map(|i| format!("rw-{i}")).collect();
    let mut fleet: String = names.iter().map(|n| local_target(n, "1s")).collect();
    // Small requests: the backlog goes out in parallel shards (split by series).
    fleet.push_str(&remote(
        "vm",
        &vm.write_url(),
        "max_samples_per_send = 20\nmax_shards = 4",
    ));
    let mut cluster = Cluster::start(3, HerdOptions::default());
    cluster.apply(1, &fleet);
    cluster.wait_until_all_owned_and_scraped(&names, 5.0, BOUND);
    let leader = cluster.wait_leader(BOUND);
    let (victim, owned) = cluster.status().busiest_follower(leader, &names);
    let target = owned.first().expect("the follower owns a target").clone();
    wait_until(BOUND, "the target's samples reach VictoriaMetrics", || {
        !vm.export(&format!(
            "{{__name__=\"herd_cpu_used_pct\",target=\"{target}\"}}"
        ))
        .is_empty()
    });

    phase!("VictoriaMetrics goes down; node {victim} (owner of {target}) queues, then is killed");
    vm.down();
    std::thread::sleep(Duration::from_secs(4));
    let killed_at = cluster.kill9(victim);
    cluster.wait_owner_moved(&target, victim, BOUND);
    std::thread::sleep(Duration::from_secs(3));

    phase!("VictoriaMetrics comes back, then node {victim}: every sample arrives");
    vm.up();
    cluster.restart(victim);
    // The window ends a moment ago, well after the takeover.
    std::thread::sleep(Duration::from_secs(3));
    let until = now_ms() - 1500;
    let live = cluster.live_nodes()[0];
    let want = wait_for(BOUND, "the herd answers for every node", || {
        let p = herd_points(cluster.node(live), &target, "cpu.used_pct", until);
        // The dead owner's samples are among them once it answers again.
        p.iter().any(|(t, _)| *t < killed_at - 2000).then_some(p)
    });
    wait_until(
        BOUND,
        "VictoriaMetrics holds every sample the herd holds",
        || {
            let got: BTreeSet<(i64, u64)> = vm
                .export(&format!(
                    "{{__name__=\"herd_cpu_used_pct\",target=\"{target}\"}}"
                ))
                .iter()
                .flat_map(|(_, p)| p.iter().map(|(t, v)| (*t, v.to_bits())))
                .collect();
            let missing: Vec<i64> = want.difference(&got).map(|p| p.0).collect();
            if !missing.is_empty() {
                eprintln!(
                    "    not yet: {} missing, first {:?}",
                    missing.len(),
                    missing.first()
                );
            }
            missing.is_empty()
        },
    );
    let before = want.iter().filter(|(t, _)| *t < killed_at).count();
    eprintln!(
        "    {} samples of {target} in the window, none missing: {before} scraped by node \
         {victim} before its kill (its backlog), {} after it (by its successor, and by \
         itself once back)",
        want.len(),
        want.len() - before
    );
    assert!(
        want.len() > before,
        "the successor's samples are in the window"
    );
}
