//! One story per backend: the same steps run on SQLite always and on PostgreSQL when the test
//! suite's private server is up.

use std::future::Future;

use super::*;

async fn on_each_backend<F, Fut>(story: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    story(ready(dir.path().join("ferry.db").to_str().unwrap()).await).await;
    if let Some(url) = ferry_tests::pg::fresh_database() {
        story(ready(&url).await).await;
    }
}

/// A store on a new database, with ferry's schema.
async fn ready(url: &str) -> Store {
    let store = Store::open(url).await.unwrap();
    store.prepare(Access::Migrate).await.unwrap();
    store
}

fn job(name: &str) -> JobRow {
    JobRow {
        name: name.into(),
        rule: "mirror".into(),
        source: "/srv/a".into(),
        destinations: vec!["/backup/a".into(), "/backup/b".into()],
        include: vec!["*.doc".into()],
        exclude: vec!["*.tmp".into()],
        checksum: true,
        ..Default::default()
    }
}

fn schedule(name: &str, job: &str) -> ScheduleRow {
    ScheduleRow {
        name: name.into(),
        job_name: job.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        preferred: None,
        fallback_any: true,
        held: false,
        retries: 1,
        retry_delay_ms: 0,
        misfire: "run_once".into(),
        run_requested_at: None,
        fired_until: None,
        last_error: None,
        created_at: Utc::now(),
    }
}

/// Adds job `docs` and its schedule `every`, which the run helpers below refer to.
async fn with_every_schedule(store: &Store) {
    store.add_job(&job("docs")).await.unwrap();
    store
        .add_schedule(&schedule("every", "docs"))
        .await
        .unwrap();
}

/// A cron firing of schedule `every` (job `docs`) by scheduler `who`, lease epoch 1.
fn cron_run(fire_time: DateTime<Utc>, who: &str) -> NewRun {
    NewRun {
        job_name: "docs".into(),
        schedule_name: Some("every".into()),
        monitor_name: None,
        fire_time,
        trigger: "cron",
        holder: holder(who),
        epoch: 1,
    }
}

fn holder(name: &str) -> LeaseHolder {
    LeaseHolder {
        name: name.into(),
        instance: format!("{name}-instance"),
    }
}

#[tokio::test]
async fn definitions_round_trip() {
    on_each_backend(|store| async move {
        store.add_job(&job("docs")).await.unwrap();
        assert!(matches!(
            store.add_job(&job("docs")).await,
            Err(StoreError::Exists { .. })
        ));
        assert_eq!(store.job("docs").await.unwrap(), Some(job("docs")));

        store
            .add_schedule(&schedule("nightly", "docs"))
            .await
            .unwrap();
        let listed = store.schedules().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].cron, "* * * * * *");
        assert_eq!(listed[0].retries, 1);

        let err = store.remove_job("docs").await.unwrap_err();
        assert!(err.to_string().contains("schedule nightly"), "{err}");
        store
            .set_held(ResourceKind::Schedule, "nightly", true)
            .await
            .unwrap();
        assert!(store.schedules().await.unwrap()[0].held);
        store
            .set_last_error(ResourceKind::Schedule, "nightly", Some("bad cron"))
            .await
            .unwrap();
        let status = store.status().await.unwrap();
        assert_eq!(status[0].state, "held");
        assert_eq!(status[0].last_error.as_deref(), Some("bad cron"));

        store
            .remove(ResourceKind::Schedule, "nightly")
            .await
            .unwrap();
        store.remove_job("docs").await.unwrap();
        assert!(store.jobs().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_job_in_use_is_not_removed_and_the_error_says_by_what() {
    on_each_backend(|store| async move {
        with_every_schedule(&store).await;
        let refused = store.remove_job("docs").await.unwrap_err().to_string();
        assert_eq!(
            refused,
            "job \"docs\" is still used by schedule every; remove that first, or point it elsewhere"
        );
        assert!(store.job("docs").await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn a_lease_has_one_holder_and_a_new_epoch_per_claim() {
    on_each_backend(|store| async move {
        let (a, b) = (holder("a"), holder("b"));
        let kind = ResourceKind::Schedule;
        let epoch = claim(&store, kind, "s", &a, 60_000)
            .await
            .expect("a free lease is claimed");
        assert_eq!(
            claim(&store, kind, "s", &b, 60_000).await,
            None,
            "a live lease is not stolen"
        );
        let held = |who: &LeaseHolder| {
            let (store, who) = (store.clone(), who.clone());
            async move { store.renew_all(&who, 60_000).await.unwrap() }
        };
        let renewed = RenewedLease {
            kind,
            name: "s".into(),
            epoch,
        };
        assert_eq!(held(&a).await, vec![renewed]);
        assert!(held(&b).await.is_empty());

        store.release(kind, "s", &a, epoch).await.unwrap();
        let next = claim(&store, kind, "s", &b, 60_000)
            .await
            .expect("a released lease is free");
        assert_eq!(next, epoch + 1);
        assert!(held(&a).await.is_empty(), "the old holder lost it");
    })
    .await;
}

#[tokio::test]
async fn an_expired_lease_goes_to_the_next_claimant() {
    on_each_backend(|store| async move {
        let kind = ResourceKind::Monitor;
        let first = claim(&store, kind, "m", &holder("a"), 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let second = claim(&store, kind, "m", &holder("b"), 60_000).await;
        assert_eq!(second, Some(first + 1));
        assert!(
            store
                .renew_all(&holder("a"), 60_000)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_lease_that_expired_unclaimed_is_still_its_holders() {
    on_each_backend(|store| async move {
        let kind = ResourceKind::Monitor;
        let epoch = claim(&store, kind, "m", &holder("a"), 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let renewed = store.renew_all(&holder("a"), 60_000).await.unwrap();
        let monitor = RenewedLease {
            kind: ResourceKind::Monitor,
            name: "m".into(),
            epoch,
        };
        assert_eq!(renewed, vec![monitor]);
        assert_eq!(
            claim(&store, kind, "m", &holder("b"), 60_000).await,
            None,
            "renewed, it is live again"
        );
    })
    .await;
}

#[tokio::test]
async fn a_job_has_one_holder_and_a_new_epoch_each_time_it_changes_hands() {
    on_each_backend(|store| async move {
        let (a, b) = (holder("a"), holder("b"));
        let first = hold(&store, "j", &a, 60_000).await;
        let first = first.expect("a job nobody holds is taken");
        assert_eq!(hold(&store, "j", &b, 60_000).await, None);
        assert_eq!(
            hold(&store, "j", &a, 60_000).await,
            Some(first),
            "its holder takes it again under the same epoch"
        );
        assert_eq!(
            store.renew_job_holds(&a, 60_000).await.unwrap(),
            vec![("j".to_owned(), first)]
        );
        assert!(store.renew_job_holds(&b, 60_000).await.unwrap().is_empty());

        store.release_job("j", &a, first).await.unwrap();
        let second = hold(&store, "j", &b, 1).await;
        assert_eq!(second, Some(first + 1), "a job given back is free");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let third = hold(&store, "j", &a, 60_000).await;
        assert_eq!(third, Some(first + 2), "a job whose holder lapsed is taken");
        assert!(store.renew_job_holds(&b, 60_000).await.unwrap().is_empty());
        store.release_job("j", &b, first + 1).await.unwrap();
        assert_eq!(
            store.renew_job_holds(&a, 60_000).await.unwrap(),
            vec![("j".to_owned(), first + 2)],
            "a stale release changes nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn a_firing_runs_once() {
    on_each_backend(|store| async move {
        with_every_schedule(&store).await;
        let fire_time = store.now().await.unwrap();
        let run = |who: &str| cron_run(fire_time, who);
        let id = store
            .start_run(&run("a"))
            .await
            .unwrap()
            .expect("first insert wins");
        assert_eq!(
            store.start_run(&run("b")).await.unwrap(),
            None,
            "the same firing again is refused"
        );
        assert_eq!(
            store.fired_so_far(&["every".into()]).await.unwrap()["every"]
                .1
                .map(|t| t.timestamp_millis()),
            Some(fire_time.timestamp_millis())
        );

        store.add_event(id, "info", "started", None).await.unwrap();
        let counters = Counters {
            files_copied: 2,
            files_deleted: 1,
            bytes_total: 10,
            bytes_sent: 10,
        };
        let first = RunAttempt {
            id,
            instance: holder("a").instance,
            attempt: 1,
        };
        let stale = RunAttempt {
            attempt: 0,
            ..first.clone()
        };
        let end = |state| RunEnd {
            state,
            error: None,
            counters: Counters::default(),
            retry_in_ms: None,
        };
        store.finish_run(&stale, &end("succeeded")).await.unwrap();
        assert_eq!(
            store
                .run_for("every", fire_time)
                .await
                .unwrap()
                .unwrap()
                .state,
            "running",
            "a stale attempt is fenced out"
        );
        store
            .finish_run(
                &first,
                &RunEnd {
                    state: "failed",
                    error: Some("disk full".into()),
                    counters,
                    retry_in_ms: Some(0),
                },
            )
            .await
            .unwrap();
        let retries = store.due_retries().await.unwrap();
        assert_eq!(retries.len(), 1);
        assert!(store.begin_retry(id, 1, &holder("b"), 2).await.unwrap());
        assert!(
            !store.begin_retry(id, 1, &holder("a"), 2).await.unwrap(),
            "an attempt is taken once"
        );

        let found = store.run_for("every", fire_time).await.unwrap().unwrap();
        assert_eq!(
            (
                found.state.as_str(),
                found.attempt,
                found.scheduler.as_deref()
            ),
            ("running", 2, Some("b"))
        );
        let events = store.events_after(0, 10).await.unwrap();
        assert_eq!(events[0].message, "started");
        assert_eq!(events[0].source_name.as_deref(), Some("every"));
        store.finish_run(&first, &end("interrupted")).await.unwrap();
        let found = store.run_for("every", fire_time).await.unwrap().unwrap();
        assert_eq!(
            found.state, "running",
            "the first holder cannot end the retry it lost"
        );
    })
    .await;
}

#[tokio::test]
async fn orphaned_runs_are_marked_interrupted() {
    on_each_backend(|store| async move {
        with_every_schedule(&store).await;
        let run = cron_run(store.now().await.unwrap(), "dead");
        store.start_run(&run).await.unwrap().unwrap();
        let (kind, every) = (ResourceKind::Schedule, ["every".to_owned()]);
        let (a, b) = (holder("a"), holder("b"));
        let epoch = claim(&store, kind, "every", &a, 60_000).await.unwrap();
        assert_eq!(
            epoch, 1,
            "the run was started under the lease's first epoch"
        );
        assert_eq!(store.interrupt_orphans(kind, &every).await.unwrap(), 0);
        store.release(kind, "every", &a, epoch).await.unwrap();
        claim(&store, kind, "every", &b, 60_000).await.unwrap();
        assert_eq!(store.interrupt_orphans(kind, &every).await.unwrap(), 1);
        let runs = store.runs(Some("docs"), 10).await.unwrap();
        assert_eq!(runs[0].state, "interrupted");
        assert!(runs[0].retry_at.is_some(), "a retry is due");
    })
    .await;
}

#[tokio::test]
async fn a_live_scheduler_name_is_refused() {
    on_each_backend(|store| async move {
        let me = |instance: &str| Registration {
            name: "s1".into(),
            instance_id: instance.into(),
            host: "host-a".into(),
            pid: 1,
            version: "test".into(),
            lease_ttl_ms: 60_000,
        };
        store.register_scheduler(&me("one")).await.unwrap();
        let err = store.register_scheduler(&me("two")).await.unwrap_err();
        assert!(err.to_string().contains("host-a"), "{err}");
        assert!(store.heartbeat("s1", "one").await.unwrap());
        store.deregister("s1", "one").await.unwrap();
        store.register_scheduler(&me("two")).await.unwrap();
        assert!(
            !store.heartbeat("s1", "one").await.unwrap(),
            "the old instance lost its name"
        );
        let listed = store.schedulers().await.unwrap();
        assert!(listed[0].alive);
    })
    .await;
}

#[tokio::test]
async fn time_written_by_ferry_compares_with_the_databases_now() {
    on_each_backend(|store| async move {
        with_every_schedule(&store).await;
        let requested = store.request_run("every").await.unwrap();
        let now = store.now().await.unwrap();
        assert!((now - requested).num_seconds().abs() < 5);
        store.clear_run_request("every", requested).await.unwrap();
        assert_eq!(store.schedules().await.unwrap()[0].run_requested_at, None);
    })
    .await;
}

#[tokio::test]
async fn old_finished_runs_are_pruned_with_their_events() {
    on_each_backend(|store| async move {
        with_every_schedule(&store).await;
        let start = |fire_time| cron_run(fire_time, "a");
        let now = store.now().await.unwrap();
        let done = store.start_run(&start(now)).await.unwrap().unwrap();
        let running = store
            .start_run(&start(now + chrono::Duration::seconds(1)))
            .await
            .unwrap()
            .unwrap();
        store
            .add_event(done, "info", "old news", None)
            .await
            .unwrap();
        let attempt = RunAttempt {
            id: done,
            instance: holder("a").instance,
            attempt: 1,
        };
        let end = RunEnd {
            state: "succeeded",
            error: None,
            counters: Counters::default(),
            retry_in_ms: None,
        };
        store.finish_run(&attempt, &end).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;

        assert_eq!(
            store.prune_runs(60_000, 100).await.unwrap(),
            0,
            "younger than the limit"
        );
        assert_eq!(store.prune_runs(10, 100).await.unwrap(), 1);
        let left: Vec<i64> = store
            .runs(None, 10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, vec![running], "a running run is never pruned");
        assert!(
            store.events_after(0, 10).await.unwrap().is_empty(),
            "events go with their run"
        );
    })
    .await;
}

/// Claims one lease; its new epoch if won.
async fn claim(
    store: &Store,
    kind: ResourceKind,
    name: &str,
    who: &LeaseHolder,
    ttl_ms: i64,
) -> Option<i64> {
    let won = store.claim_all(kind, &[name.into()], who, ttl_ms).await;
    won.unwrap().first().map(|lease| lease.epoch)
}

/// Holds one job; its epoch if held.
async fn hold(store: &Store, job: &str, who: &LeaseHolder, ttl_ms: i64) -> Option<i64> {
    let held = store.hold_jobs(&[job.into()], who, ttl_ms).await.unwrap();
    held.first().map(|(_, epoch)| *epoch)
}
