//! Monitors between agents: every change replicated every way, a restarted agent watched
//! again, and replication through a database that is down or hangs.

use super::*;

/// Whether `path` holds exactly `content`.
fn holds(path: &Path, content: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|text| text == content)
}

#[test]
fn a_monitor_on_agents_replicates_each_change_every_way_and_rewatches_a_restarted_agent() {
    let mut site = Site::new();
    // A rescan an hour away: every change below must come through the agents' watches.
    let (src, dst) = site.monitor("sync", &["--rescan", "1h"]);
    let first_sync = Duration::from_secs(30);
    assert!(
        wait_until(first_sync, || holds(
            &dst.join("before.txt"),
            "there before the monitor"
        )),
        "the first full sync did not reach nas2: {:#}",
        site.runs("live")
    );

    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/new.txt"), "written on nas1").unwrap();
    fs::write(dst.join("back.txt"), "written on nas2").unwrap();
    let soon = Duration::from_secs(5);
    assert!(
        wait_until(soon, || holds(&dst.join("a/new.txt"), "written on nas1")),
        "a change on the source agent was not replicated"
    );
    assert!(
        wait_until(soon, || holds(&src.join("back.txt"), "written on nas2")),
        "under the sync rule, a change on the destination agent was not replicated back"
    );

    // The source agent dies; what changes meanwhile is found when the watch comes back.
    let nas1 = site.agents[0].take().unwrap();
    let address = nas1.address.clone();
    nas1.kill();
    fs::write(src.join("while-down.txt"), "changed while nas1 was down").unwrap();
    let restarted = TestAgent::start_at(&site.env, "nas1", &[&site.srv[0]], &site.tls, &address);
    site.agents[0] = Some(restarted);
    assert!(
        wait_until(first_sync, || holds(
            &dst.join("while-down.txt"),
            "changed while nas1 was down"
        )),
        "the monitor did not come back after nas1 restarted"
    );
    fs::write(src.join("after.txt"), "written after the restart").unwrap();
    assert!(
        wait_until(soon, || holds(
            &dst.join("after.txt"),
            "written after the restart"
        )),
        "the watch on the restarted agent does not report changes"
    );
    assert_eq!(differences(&src, &dst, "sync"), "");

    let events = site.env.ferry(&["tail", "-n", "1000"]).ok().stdout;
    assert!(events.contains("watching nas1:"), "{events}");
    // Whichever noticed first, the broken watch or a sync, the outage is reported.
    let outage = events
        .lines()
        .any(|line| line.contains("error") && line.contains("nas1") && line.contains("retrying"));
    assert!(outage, "{events}");
    assert!(events.contains("changed paths"), "{events}");
    let status = site.env.ferry(&["monitor", "list"]).ok().stdout;
    assert!(status.contains("live"), "{status}");
}

#[test]
fn a_monitor_on_agents_keeps_replicating_while_the_database_is_down() {
    let Some(server) = own_server() else { return };
    let site = Site::on(Env::on_server(&server));
    let (src, dst) = site.monitor("mirror", &["--rescan", "1h"]);
    let soon = Duration::from_secs(10);
    assert!(wait_until(soon, || holds(
        &dst.join("before.txt"),
        "there before the monitor"
    )));
    let runs = "SELECT CAST(COUNT(*) AS TEXT) FROM runs WHERE monitor_name = 'live'";
    assert_eq!(site.env.sql_text(runs).as_deref(), Some("1"));

    server.stop().unwrap();
    let scheduler = site.scheduler.as_ref().unwrap();
    scheduler.wait_for_log("database unreachable", Duration::from_secs(15));
    // Well past the lease deadline: local work would have stopped by now.
    std::thread::sleep(Duration::from_secs(6));
    fs::write(src.join("during.txt"), "during the outage").unwrap();
    assert!(
        wait_until(soon, || holds(&dst.join("during.txt"), "during the outage")),
        "the monitor stopped with the database:\n{}",
        scheduler.log()
    );
    assert!(!scheduler.log().contains("stopped all local work"));

    server.restart().unwrap();
    scheduler.wait_for_log("database reachable again", Duration::from_secs(20));
    fs::write(src.join("after.txt"), "after").unwrap();
    assert!(wait_until(soon, || holds(&dst.join("after.txt"), "after")));
    // The same holding went on through the outage: no second run, no new epoch.
    assert_eq!(site.env.sql_text(runs).as_deref(), Some("1"));
    let epoch = "SELECT CAST(epoch AS TEXT) FROM leases WHERE name = 'live'";
    assert_eq!(site.env.sql_text(epoch).as_deref(), Some("1"));
}

#[test]
fn a_monitor_on_agents_keeps_replicating_while_the_database_hangs() {
    // A frozen server keeps its connections open and answers nothing: every write the
    // scheduler tries could wait forever.
    let Some(server) = own_server() else { return };
    let site = Site::on(Env::on_server(&server));
    let (src, dst) = site.monitor("mirror", &[]);
    let soon = Duration::from_secs(10);
    assert!(wait_until(soon, || holds(
        &dst.join("before.txt"),
        "there before the monitor"
    )));

    server.freeze().unwrap();
    let scheduler = site.scheduler.as_ref().unwrap();
    scheduler.wait_for_log("database unreachable", Duration::from_secs(15));
    // A burst of files: a scheduler that waited on the database for each file's event would
    // be busy for a long while before it took the next change.
    for round in 0..20 {
        fs::write(src.join(format!("burst-{round}.txt")), "burst").unwrap();
    }
    let burst = |dst: &Path| (0..20).all(|r| holds(&dst.join(format!("burst-{r}.txt")), "burst"));
    assert!(wait_until(soon, || burst(&dst)), "{}", scheduler.log());
    fs::write(src.join("next.txt"), "right after the burst").unwrap();
    assert!(
        wait_until(Duration::from_secs(8), || holds(
            &dst.join("next.txt"),
            "right after the burst"
        )),
        "the change after the burst waited on the database:\n{}",
        scheduler.log()
    );
    server.thaw().unwrap();
    scheduler.wait_for_log("database reachable again", Duration::from_secs(30));
    fs::write(src.join("after.txt"), "after").unwrap();
    assert!(wait_until(soon, || holds(&dst.join("after.txt"), "after")));
}
