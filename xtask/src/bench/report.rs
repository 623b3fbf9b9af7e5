//! The Markdown of a bench result: the targets first (met or missed, never hidden), then a
//! table per measurement.

use std::fmt::Write as _;

use serde_json::Value;

pub fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let m = &r["meta"];
    let _ = writeln!(
        md,
        "Measured {} on {} ({} cores, {} GiB), kernel {}, commit {}{}; the run took {} min.\n",
        s(&m["date"]),
        s(&m["cpu"]),
        m["cores"],
        m["memory_gib"],
        s(&m["kernel"]),
        s(&m["commit"]),
        if m["quick"].as_bool() == Some(true) { ", **quick mode (small counts: rough numbers)**" } else { "" },
        m["minutes"]
    );
    let h = &r["host"];
    targets(&mut md, h);
    per_packet(&mut md, &h["per-packet"]);
    throughput(&mut md, &h["throughput"]);
    control(&mut md, &h["control"], "### Control-plane latency");
    connections(&mut md, &h["connections"]);
    footprint(&mut md, &h["footprint"]);
    loss(&mut md, &h["accuracy"]);
    if let Some(vm) = r["vm"].as_object().filter(|v| !v.is_empty()) {
        vm_section(&mut md, vm);
    }
    md
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The case of a section's `cases` whose name starts with `prefix`.
fn case<'a>(section: &'a Value, prefix: &str) -> Option<&'a Value> {
    section["cases"].as_array()?.iter().find(|c| c["case"].as_str().is_some_and(|n| n.starts_with(prefix)))
}

fn targets(md: &mut String, h: &Value) {
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    let tp = &h["throughput"];
    if !tp.is_null() {
        let ratio = |p: &str| case(tp, p).map(|c| f(&c["ratio"])).unwrap_or(f64::NAN);
        let (idle, many, ipt) = (ratio("chaos-daemon, 1 "), ratio("chaos-daemon, 10,000"), ratio("iptables"));
        rows.push(("Idle program: throughput ≥ 98% of no program".into(), pct(idle), Some(idle >= 0.98)));
        rows.push(("10,000 non-matching rules: throughput ≥ 95%".into(), pct(many), Some(many >= 0.95)));
        // "5× better": the throughput iptables loses is at least 5 times what chaos-daemon loses.
        let (ours, theirs) = ((1.0 - many).max(0.0), 1.0 - ipt);
        rows.push((
            "… and ≥ 5× better than 10,000 iptables rules (throughput lost)".into(),
            format!("{:.1}% lost vs {:.1}% with iptables", ours * 100.0, theirs * 100.0),
            Some(theirs >= 5.0 * ours && theirs > 0.0),
        ));
    }
    let pp = &h["per-packet"];
    if !pp.is_null()
        && let (Some(empty), Some(many)) = (case(pp, "empty program"), case(pp, "10,000 rules"))
    {
        let above = max_over(&many["ns"], &empty["ns"]);
        rows.push((
            "Per-packet cost, 10,000 rules: ≤ 100 ns above no program".into(),
            format!("{above:.0} ns (worst packet and hook)"),
            Some(above <= 100.0),
        ));
    }
    if let Some(rows_cp) = h["control"]["rows"].as_array() {
        let targets = [
            (
                "chaos-daemon, socket, cold (no other fault on the interface): TCX, idle",
                2000.0,
                "the socket, cold on TCX (the first fault on an interface, its last removed)",
            ),
            (
                "chaos-daemon, socket, cold (no other fault on the interface): cls_bpf",
                2000.0,
                "the socket, cold on cls_bpf",
            ),
            ("chaos-daemon, socket, warm", 2000.0, "the socket, warm (the interface has a fault)"),
            ("chaos-daemon, socket, next to 9,999", 2000.0, "the socket next to 9,999 other faults"),
            ("chaos-daemon, chaosctl, cold", 10_000.0, "chaosctl, cold"),
            ("chaos-daemon, chaosctl, warm", 10_000.0, "chaosctl, warm"),
        ];
        for (prefix, target, name) in targets {
            if let Some(row) = rows_cp.iter().find(|r| r["how"].as_str().is_some_and(|h| h.starts_with(prefix))) {
                let worst = f(&row["apply"]["p99_us"]).max(f(&row["remove"]["p99_us"]));
                rows.push((
                    format!("Apply or remove through {name}: p99 ≤ {} ms", target / 1000.0),
                    format!("apply {} / remove {}", us(&row["apply"]["p99_us"]), us(&row["remove"]["p99_us"])),
                    Some(worst <= target),
                ));
            }
        }
    }
    let cx = &h["connections"];
    if !cx.is_null() {
        let p99 = f(&cx["status_while_held"]["p99_us"]);
        rows.push((
            format!("Root's `chaosctl status` with {} idle connections held by another user: p99 ≤ 100 ms", cx["held"]),
            us(&cx["status_while_held"]["p99_us"]),
            Some(p99 <= 100_000.0),
        ));
    }
    let fp = &h["footprint"];
    if !fp.is_null() {
        let rss = f(&fp["idle"]["rss_mb"]);
        rows.push(("Daemon idle RSS ≤ 20 MB".into(), format!("{rss:.1} MB"), Some(rss <= 20.0)));
        let loaded = f(&fp["loaded_10000"]["rss_mb"]);
        rows.push(("Daemon RSS with 10,000 faults ≤ 40 MB".into(), format!("{loaded:.1} MB"), Some(loaded <= 40.0)));
        let load = f(&fp["load_10000_ms"]);
        rows.push((
            "Loading 10,000 faults from one file ≤ 300 ms".into(),
            format!("{load:.0} ms"),
            Some(load <= 300.0),
        ));
        let ready = f(&fp["start_to_ready_ms"]["max"]);
        rows.push((
            "Start to ready ≤ 300 ms".into(),
            format!("{:.0} ms median, {ready:.0} ms worst", f(&fp["start_to_ready_ms"]["median"])),
            Some(ready <= 300.0),
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Targets\n\n| target | measured | |\n|---|---|---|");
    for (t, measured, met) in rows {
        let mark = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let _ = writeln!(md, "| {t} | {measured} | {mark} |");
    }
    md.push('\n');
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn us(v: &Value) -> String {
    let x = f(v);
    if x >= 1000.0 { format!("{:.1} ms", x / 1000.0) } else { format!("{x:.0} µs") }
}

/// The largest difference between two `{hook: {packet: ns}}` tables.
fn max_over(a: &Value, b: &Value) -> f64 {
    let mut worst = f64::NAN;
    for (hook, packets) in a.as_object().into_iter().flatten() {
        for (packet, ns) in packets.as_object().into_iter().flatten() {
            let d = f(ns) - f(&b[hook][packet]);
            worst = if worst.is_nan() { d } else { worst.max(d) };
        }
    }
    worst
}

fn per_packet(md: &mut String, pp: &Value) {
    let Some(cases) = pp["cases"].as_array() else { return };
    let _ = write!(
        md,
        "### Per-packet cost (ns)\n\nBPF_PROG_TEST_RUN of the daemon's own programs on its own maps (rules made by \
         faults sent to its socket), median of {} runs of {} repetitions; \"empty program\" returns at once \
         and is the harness's own cost. The last columns are the worst packet's cost above the empty \
         program and its ratio to the no-rule case.",
        pp["runs"], pp["repeat"]
    );
    if let Some(c) = cases.iter().find(|c| !c["baseline"].is_null()) {
        let _ = write!(
            md,
            " Rows \"one run per call\" are the mean of the middle half of {} test runs of one repetition \
             each, above the empty program timed the same way: an answered query is rewritten in place, so \
             repetitions would time its answer.",
            c["calls"]
        );
    }
    md.push_str("\n\n");
    let packets = ["ipv4/tcp", "ipv4/udp", "ipv6/tcp", "ipv6/udp"];
    let _ = writeln!(
        md,
        "| case | hook | {} | above empty | × no rules |\n|---|---|---:|---:|---:|---:|---:|---:|",
        packets.join(" | ")
    );
    let empty = case(pp, "empty program").map(|c| &c["ns"]);
    let none = case(pp, "no rules").map(|c| &c["ns"]);
    for c in cases {
        // A row timed another way is compared with the empty program timed that way, and with
        // no no-rule row.
        let (empty, none) = match c["baseline"].as_str() {
            Some(b) => (cases.iter().find(|x| x["case"] == b).map(|x| &x["ns"]), None),
            None => (empty, none),
        };
        for hook in ["egress", "ingress"] {
            let ns = &c["ns"][hook];
            let cells: Vec<String> = packets.iter().map(|p| format!("{:.0}", f(&ns[*p]))).collect();
            let worst = |base: Option<&Value>, ratio: bool| {
                let Some(base) = base else { return String::new() };
                let v = packets.iter().map(|p| {
                    let (x, b) = (f(&ns[*p]), f(&base[hook][*p]));
                    if ratio { x / b } else { x - b }
                });
                let m = v.fold(f64::NAN, f64::max);
                if ratio { format!("{m:.2}") } else { format!("{m:.0}") }
            };
            let _ = writeln!(
                md,
                "| {} | {hook} | {} | {} | {} |",
                s(&c["case"]),
                cells.join(" | "),
                worst(empty, false),
                worst(none, true)
            );
        }
    }
    md.push('\n');
}

fn throughput(md: &mut String, tp: &Value) {
    let Some(cases) = tp["cases"].as_array() else { return };
    let _ = writeln!(
        md,
        "### Throughput\n\nOne TCP connection over a veth pair between two namespaces, {} s per round, the \
         cases in turn for {} rounds; the median round, and its ratio to no program.\n\n| case | Gbit/s | ratio | rounds |\n|---|---:|---:|---|",
        tp["seconds"], tp["rounds"]
    );
    for c in cases {
        let rounds: Vec<String> =
            c["rounds_gbit_s"].as_array().into_iter().flatten().map(|x| format!("{:.2}", f(x))).collect();
        let _ = writeln!(
            md,
            "| {} | {:.2} | {} | {} |",
            s(&c["case"]),
            f(&c["gbit_s"]),
            pct(f(&c["ratio"])),
            rounds.join(", ")
        );
    }
    md.push('\n');
}

fn control(md: &mut String, cp: &Value, heading: &str) {
    let Some(rows) = cp["rows"].as_array() else { return };
    let _ = writeln!(
        md,
        "{heading}\n\n{} applies and removals each ({}); from the request to its answer, which comes once the \
         change is in the kernel.\n\n| how | apply p50 | apply p99 | remove p50 | remove p99 |\n|---|---:|---:|---:|---:|",
        cp["ops"],
        s(&cp["fault"])
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s(&r["how"]),
            us(&r["apply"]["p50_us"]),
            us(&r["apply"]["p99_us"]),
            us(&r["remove"]["p50_us"]),
            us(&r["remove"]["p99_us"])
        );
    }
    md.push('\n');
}

fn connections(md: &mut String, cx: &Value) {
    if cx.is_null() {
        return;
    }
    let _ = writeln!(
        md,
        "### Connections

{} idle connections to the control socket held open by uid 65534, the daemon \
         under the packaged unit's open-files limit ({}); root's `chaosctl status` (a whole run of the \
         command) {} times before and while they are held. Lines the daemon logged about them: {}.\n\n\
         | | p50 | p99 | worst |\n|---|---:|---:|---:|",
        cx["held"], cx["nofile"], cx["status_alone"]["n"], cx["log_lines"]
    );
    for (name, key) in [("alone", "status_alone"), ("while held", "status_while_held")] {
        let r = &cx[key];
        let _ = writeln!(md, "| {name} | {} | {} | {} |", us(&r["p50_us"]), us(&r["p99_us"]), us(&r["max_us"]));
    }
    md.push('\n');
}

fn footprint(md: &mut String, fp: &Value) {
    if fp.is_null() {
        return;
    }
    let _ = writeln!(
        md,
        "### Footprint\n\n| | no fault | 10,000 faults |\n|---|---:|---:|\n\
         | resident memory | {:.1} MB | {:.1} MB |\n| BPF map memory (kernel) | {:.1} MB | {:.1} MB |\n\
         | CPU while idle ({} s) | {:.3}% | {:.3}% |\n",
        f(&fp["idle"]["rss_mb"]),
        f(&fp["loaded_10000"]["rss_mb"]),
        f(&fp["idle"]["maps_mb"]),
        f(&fp["loaded_10000"]["maps_mb"]),
        fp["idle_window_s"],
        f(&fp["idle"]["cpu_percent"]),
        f(&fp["loaded_10000"]["cpu_percent"]),
    );
    let _ = writeln!(
        md,
        "Start to ready (socket answers): {:.0} ms median, {:.0} ms worst of {}. Loading 10,000 faults \
         (`chaosctl apply -f`): {:.0} ms; clearing them: {:.0} ms.\n",
        f(&fp["start_to_ready_ms"]["median"]),
        f(&fp["start_to_ready_ms"]["max"]),
        fp["start_to_ready_ms"]["n"],
        f(&fp["load_10000_ms"]),
        f(&fp["clear_10000_ms"]),
    );
}

fn loss(md: &mut String, acc: &Value) {
    let Some(rows) = acc["rows"].as_array() else { return };
    let _ = writeln!(
        md,
        "### Loss accuracy\n\n{} UDP datagrams per rate, counted at the receiver; the bound is {} binomial \
         standard deviations (99.9%).\n\n| asked | measured | bound | within | counted by the rule (matched / dropped) |\n|---:|---:|---:|---|---|",
        acc["packets"], acc["z"]
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {}% | {:.3}% | ±{:.3}% | {} | {} / {} |",
            r["asked_percent"],
            f(&r["measured_percent"]),
            f(&r["bound_percent"]),
            if r["within"].as_bool() == Some(true) { "yes" } else { "**no**" },
            r["counted"]["matched"],
            r["counted"]["dropped"]
        );
    }
    md.push('\n');
}

fn vm_section(md: &mut String, vm: &serde_json::Map<String, Value>) {
    let kernel = vm.values().find_map(|v| v["kernel"].as_str()).unwrap_or("?");
    let _ = writeln!(
        md,
        "### In the VM: delay and rate, per backend\n\nKernel {kernel} under qemu without acceleration (TCG): \
         every time is emulated, so compare rows within a table, not with the host's.\n\n\
         | backend | delay 50 ms: median shift | jitter 10 ms: std dev (expected) | rate 10 Mbit/s: payload goodput (expected) |\n|---|---:|---:|---:|"
    );
    for (backend, v) in vm {
        let a = &v["accuracy"];
        let _ = writeln!(
            md,
            "| {backend} | {:.2} ms | {:.2} ms ({:.2}) | {:.2} Mbit/s ({:.2}) |",
            f(&a["delay_50ms"]["median_shift_ms"]),
            f(&a["jitter_10ms_uniform"]["std_dev_ms"]),
            f(&a["jitter_10ms_uniform"]["expected_std_dev_ms"]),
            f(&a["rate_10mbit"]["goodput_mbit_s"]),
            f(&a["rate_10mbit"]["expected_mbit_s"]),
        );
    }
    md.push('\n');
    for (backend, v) in vm {
        control(md, &v["control"], &format!("### In the VM: applying a delay, {backend} backend, next to tc"));
    }
}
