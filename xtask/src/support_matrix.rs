//! `cargo xtask support-matrix`: docs/support-matrix.md from the results `cargo xtask vm-test`
//! wrote per kernel: which suites passed where, and what the daemon reported of each kernel.

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::vm::{SUITES, kernels::KERNELS, results};

const DOC: &str = "docs/support-matrix.md";

pub fn run() -> anyhow::Result<()> {
    let dir = results::dir();
    // In the table's order: the kernels as `--kernel all` runs them.
    let mut records = Vec::new();
    for k in KERNELS {
        let path = dir.join(format!("{}.json", k.name));
        if let Ok(text) = std::fs::read_to_string(&path) {
            records.push(serde_json::from_str::<Value>(&text).with_context(|| format!("reading {}", path.display()))?);
        }
    }
    if records.is_empty() {
        bail!("no results in {}: run `cargo xtask vm-test --kernel all` first", dir.display());
    }
    let path = crate::workspace().join(DOC);
    std::fs::write(&path, render(&records)).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {DOC} from {} kernels' results", records.len());
    Ok(())
}

fn render(records: &[Value]) -> String {
    // A cell's text: a `|` in it would end the cell.
    let s = |v: &Value| v.as_str().unwrap_or("-").replace('|', "\\|");
    // Each suite's own date: a rerun of a few suites keeps the others' results.
    let mut dates: Vec<String> = records
        .iter()
        .flat_map(|r| suites(r).map(|x| s(if x["date"].is_string() { &x["date"] } else { &r["date"] })))
        .collect();
    dates.sort();
    let (first, last) = (&dates[0], &dates[dates.len() - 1]);
    let when = if first == last { format!("on {first}") } else { format!("between {first} and {last}") };
    let mut md = String::from("# Support matrix\n\n");
    md += "What the end-to-end suites found on each kernel `cargo xtask vm-test` boots (Debian's cloud\n";
    md += "kernels under qemu), written by `cargo xtask support-matrix` from its results, with each suite's\n";
    md += "time in the guest. A dash: not run there.\n\n";
    md += &format!("Run {when}. Refresh with `cargo xtask vm-test --kernel all && cargo xtask support-matrix`.\n\n");

    let kernels: Vec<String> = records.iter().map(|r| s(&r["kernel"])).collect();
    md += &format!("| suite | {} |\n|---|{}\n", kernels.join(" | "), "---|".repeat(records.len()));
    let mut names: Vec<String> = SUITES.iter().map(|s| s.name.to_owned()).collect();
    names
        .extend(records.iter().flat_map(suites).map(|r| s(&r["name"])).filter(|n| !SUITES.iter().any(|s| s.name == n)));
    names.dedup();
    for name in names {
        let cells: Vec<String> = records
            .iter()
            .map(|r| {
                suites(r).find(|x| x["name"] == name.as_str()).map_or("-".into(), |x| match x["seconds"].as_f64() {
                    Some(secs) => format!("{} ({secs:.0} s)", s(&x["result"])),
                    None => s(&x["result"]),
                })
            })
            .collect();
        if cells.iter().any(|c| c != "-") {
            md += &format!("| {name} | {} |\n", cells.join(" | "));
        }
    }

    md += "\n## What the daemon reports on each (`chaosctl status`)\n\n";
    md += "| kernel | guest kernel | package | delay backend | can | cannot | SSH guard |\n";
    md += "|---|---|---|---|---|---|---|\n";
    for r in records {
        let cells = results::abilities(&r["status"]).map(|c| c.replace('|', "\\|"));
        md += &format!(
            "| {} | {} | {} {} | {} |\n",
            s(&r["kernel"]),
            s(&r["guest_release"]),
            s(&r["package"]),
            s(&r["version"]),
            cells.join(" | ")
        );
    }
    md
}

fn suites(record: &Value) -> impl Iterator<Item = &Value> {
    record["suites"].as_array().into_iter().flatten()
}
