//! The results: tables of medians and ranges, written to bench/RESULTS.md.

use super::*;

pub(crate) fn write_results(rounds: usize, rows: &[(&str, CaseSamples)]) -> Result<()> {
    let mut section =
        String::from("<!-- sync:start -->\n## Sync: ferry agent to agent vs rsync daemon\n\n");
    section.push_str(&format!(
        "`bash bench/sync.sh {rounds}` on {}, {}: loopback, {rounds} rounds each, median (min-max). \
         Bytes on the wire are counted by a TCP relay between the two ends, for every tool. \
         Memory is the peak resident set of both ends added up (and the larger end's alone), \
         CPU their user and system time added up.\n\n",
        today(),
        machine()
    ));
    section.push_str(&table(rows));
    section.push_str(
        "\nferry makes every file durable before it renames it into place (one `syncfs` per \
         batch of files); plain rsync leaves its writes in the page cache, so its disk writes \
         fall after its time, while `--fsync` makes rsync flush every file as it goes. On a \
         fresh ext4 file system (loop-mounted, no other writes) the small-file copy took \
         ferry 0.37-0.42 s and plain rsync 0.34-0.36 s in 5 rounds each: the flushes' \
         write-back shares this machine's 2 cores with both ends. This machine's own file system is mounted with online \
         discard, and after mass deletions every tool's small-file copy is several times \
         slower for minutes: compare tools within one run, not across runs. ferry's bytes are \
         encrypted and rsync's are not: ferry's frames travel in TLS 1.3's own records of 16 KiB, \
         whose 22 bytes each are the 0.13 % by which ferry's large-file copy sends more than \
         rsync's. Every file system call of an agent resolves its path beneath the folder's open \
         handle without following symlinks (`openat2`), which costs a few system calls per \
         file. ferry compresses file data \
         only while the link is slower than zstd (it reads the connection's TCP_INFO); over \
         loopback it sends file data raw, as plain rsync does, and compresses only the names, \
         sizes and times around it.\n",
    );
    section.push_str("<!-- sync:end -->\n");
    print!("{section}");
    replace_section(&results_file(), "sync", &section)
}

/// Set by bench/slow-link.sh, which runs this benchmark in a network namespace whose loopback
/// is held to this rate: only the small-file copy is measured, into a section of its own.
pub(crate) const SLOW_LINK: &str = "FERRY_BENCH_LINK";

pub(crate) fn write_slow_link_results(
    rounds: usize,
    rate: &str,
    rows: &[(&str, CaseSamples)],
) -> Result<()> {
    let intro = format!(
        "`bash bench/slow-link.sh {rounds} {rate}` on {}, {}: the same agents, rsync daemon and \
         counting relay as above, inside a network namespace whose loopback `tc tbf` holds to \
         {rate}. Every byte crosses that loopback twice (into the relay and out), so the path \
         between the two ends carries about half of it. {rounds} rounds each, median \
         (min-max).",
        today(),
        machine()
    );
    let outro = "Here the link, not the CPU, is the bottleneck: ferry measures that (TCP_INFO) \
                 and compresses file data, as `rsync -z` does when asked; over loopback it sends \
                 it raw.";
    let title = "Sync over a slow link: ferry agent to agent vs rsync daemon";
    write_section("sync-slow-link", title, &intro, rows, outro)
}

/// The `wan` group, run by bench/wan.sh with the relay delaying every byte: the re-syncs, into
/// a section of their own.
pub(crate) fn write_wan_results(rounds: usize, rows: &[(&str, CaseSamples)]) -> Result<()> {
    let rtt = one_way_delay().unwrap_or_default() * 2;
    let intro = format!(
        "`bash bench/wan.sh {rounds} {}` on {}, {}: the same agents, rsync daemon and counting \
         relay as above, the relay holding every byte {:?} each way, so the two ends are a \
         {rtt:?} round trip apart (bandwidth unlimited). {rounds} rounds each, median \
         (min-max).",
        rtt.as_millis(),
        today(),
        machine(),
        rtt / 2,
    );
    let outro = "Every answer a sender waits for costs a round trip here: ferry pipelines file \
                 data, deltas, removals, moves and times, and asks for signatures ahead.";
    let title = "Re-syncs across a WAN round trip: ferry agent to agent vs rsync daemon";
    write_section("sync-wan", title, &intro, rows, outro)
}

/// Writes the section `key` of bench/RESULTS.md: a title, what was run, the table, a note.
pub(crate) fn write_section(
    key: &str,
    title: &str,
    intro: &str,
    rows: &[(&str, CaseSamples)],
    outro: &str,
) -> Result<()> {
    let section = format!(
        "<!-- {key}:start -->\n## {title}\n\n{intro}\n\n{}\n{outro}\n<!-- {key}:end -->\n",
        table(rows)
    );
    print!("{section}");
    replace_section(&results_file(), key, &section)
}

pub(crate) fn table(rows: &[(&str, CaseSamples)]) -> String {
    let mut table = String::from(
        "| case | tool | wall time, s | CPU, s | bytes on the wire | peak memory, MiB | of which the larger end |\n",
    );
    table.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (case, tools) in rows {
        for (tool, samples) in tools {
            let column = |f: &dyn Fn(&Sample) -> f64, fmt: &dyn Fn(f64) -> String| {
                let mut values: Vec<f64> = samples.iter().map(f).collect();
                values.sort_by(f64::total_cmp);
                format!(
                    "{} ({}-{})",
                    fmt(values[values.len() / 2]),
                    fmt(values[0]),
                    fmt(values[values.len() - 1])
                )
            };
            let mib = |kib: u64| kib as f64 / 1024.0;
            table.push_str(&format!(
                "| {case} | {} | {} | {} | {} | {} | {} |\n",
                tool.label(),
                column(&|s| s.wall.as_secs_f64(), &|v| format!("{v:.2}")),
                column(&|s| s.cpu.as_secs_f64(), &|v| format!("{v:.2}")),
                column(&|s| s.wire as f64, &|v| human(v as u64)),
                column(&|s| mib(s.memory_kib), &|v| format!("{v:.0}")),
                column(&|s| mib(s.larger_end_kib), &|v| format!("{v:.0}")),
            ));
        }
    }
    table
}

pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::round_order;

    #[test]
    pub(crate) fn over_the_rounds_each_tool_goes_first_once_and_follows_each_other_once() {
        for tools in [2, 4, 6] {
            let orders: Vec<Vec<usize>> = (0..tools).map(|r| round_order(tools, r)).collect();
            for order in &orders {
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, (0..tools).collect::<Vec<_>>(), "{orders:?}");
            }
            let firsts: HashSet<usize> = orders.iter().map(|order| order[0]).collect();
            assert_eq!(firsts.len(), tools, "{orders:?}");
            let pairs: Vec<(usize, usize)> = orders
                .iter()
                .flat_map(|order| order.windows(2).map(|w| (w[0], w[1])))
                .collect();
            let distinct: HashSet<&(usize, usize)> = pairs.iter().collect();
            assert_eq!(pairs.len(), tools * (tools - 1), "{orders:?}");
            assert_eq!(distinct.len(), pairs.len(), "a pair repeats: {orders:?}");
        }
    }
}
