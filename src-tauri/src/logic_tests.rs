//! The app's behaviour without a display: state transitions, the menu drawn from each
//! state, and what clicks turn into.

use std::time::{Duration, Instant};

use wuwei_api::{
    Event, EventKind, EvictReason, LoadedStatus, ModelState, ModelStatus, SsdCache, Status,
};

use crate::login::LoginStatus;
use crate::menu::{self, Item, MenuAction, MenuModel};
use crate::state::{ApiCall, AppState, Daemon, Effect, Input};

fn model(id: &str, state: ModelState) -> ModelStatus {
    ModelStatus {
        id: id.into(),
        state,
        ..Default::default()
    }
}

fn status(serving: bool, loaded: &[&str], default: Option<&str>) -> Status {
    let mut s = Status {
        serving,
        state: if serving { "serving" } else { "stopped" }.into(),
        port: 8686,
        default_model: default.map(Into::into),
        loaded: loaded
            .iter()
            .map(|id| LoadedStatus {
                id: (*id).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    s.memory.budget_bytes = 12_000_000_000;
    s.memory.counted_bytes = 1_250_000_000;
    s
}

fn models() -> Vec<ModelStatus> {
    let mut broken = model("org/broken", ModelState::Incomplete);
    broken.reason = Some("model.safetensors.index.json names a missing shard".into());
    let mut small = model("small", ModelState::Loaded);
    small.default = true;
    let mut big = model("big", ModelState::Available);
    big.pinned = true;
    vec![small, broken, big]
}

/// A state connected to a serving daemon that has models.
fn connected() -> AppState {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t = Instant::now();
    s.update(Input::Connected, t);
    s.update(
        Input::Snapshot {
            status: Box::new(status(true, &["small"], Some("small"))),
            models: models(),
        },
        t,
    );
    s
}

fn event(kind: EventKind) -> Input {
    Input::Event(Event {
        seq: 1,
        time: 0,
        kind,
    })
}

fn item<'a>(m: &'a MenuModel, id: &str) -> &'a Item {
    m.find(id)
        .unwrap_or_else(|| panic!("no item {id} in {m:#?}"))
}

fn label(m: &MenuModel, id: &str) -> String {
    item(m, id).label().unwrap().to_string()
}

fn notified(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify { title, .. } => Some(title.clone()),
            _ => None,
        })
        .collect()
}

// --- the menu ---------------------------------------------------------------------------

#[test]
fn menu_of_a_serving_daemon() {
    let m = menu::build(&connected());
    assert_eq!(label(&m, "status"), "Serving on :8686 · 1 model loaded");
    assert!(!item(&m, "status").enabled());
    let serving = item(&m, "serving/stop");
    assert_eq!(serving.label(), Some("&Stop serving"));
    assert!(serving.enabled());
    assert!(m.find("serving/start").is_none());

    // Default model: radio items in id order, exactly the daemon's default checked.
    let Item::Submenu { items, .. } = item(&m, menu::DEFAULT_MENU_ID) else {
        panic!("not a submenu")
    };
    let ids: Vec<_> = items.iter().filter_map(Item::id).collect();
    assert_eq!(ids, ["default/big", "default/org/broken", "default/small"]);
    assert!(items.iter().all(|i| matches!(i, Item::Radio { .. })));
    let checked: Vec<_> = items.iter().filter(|i| i.checked() == Some(true)).collect();
    assert_eq!(checked.len(), 1);
    assert_eq!(checked[0].id(), Some("default/small"));
    assert_eq!(label(&m, "default/small"), "small (loaded)");
    // the incomplete model is shown, disabled, with the reason
    let broken = item(&m, "default/org/broken");
    assert!(!broken.enabled());
    assert_eq!(
        broken.label(),
        Some("org/broken — incomplete: model.safetensors.index.json names a missing shard")
    );

    // Pinned: check items.
    assert_eq!(item(&m, "pin/big").checked(), Some(true));
    assert_eq!(item(&m, "pin/small").checked(), Some(false));
    assert!(!item(&m, "pin/org/broken").enabled());

    // The SSD cache is shown disabled while the daemon has none.
    let cache = item(&m, "ssd-cache");
    assert_eq!(cache.label(), Some("SSD &cache (not available)"));
    assert!(!cache.enabled());
    assert_eq!(cache.checked(), Some(false));

    assert_eq!(label(&m, "memory"), "Memory: 1.2 GB / 12.0 GB budget");
    assert!(item(&m, "open-dashboard").enabled());
    assert!(item(&m, "open-models-folder").enabled());
    assert_eq!(item(&m, "login-item").checked(), Some(false));
    assert!(m.find("login-item-settings").is_none());
    assert!(item(&m, "quit").enabled());
    // this app did not start the daemon, but can ask it to stop
    assert!(item(&m, "quit-stop-daemon").enabled());
}

#[test]
fn menu_of_a_stopped_daemon_and_of_none() {
    let mut s = connected();
    s.update(
        event(EventKind::ServingChanged { serving: false }),
        Instant::now(),
    );
    let m = menu::build(&s);
    assert_eq!(label(&m, "status"), "Stopped");
    assert!(item(&m, "serving/start").enabled());

    // Not reachable, and the app may not start it: everything that needs it is disabled.
    let mut s = AppState::new(9000, false, LoginStatus::Off);
    s.update(Input::Disconnected("refused".into()), Instant::now());
    let m = menu::build(&s);
    assert_eq!(label(&m, "status"), "Daemon not running");
    assert!(!item(&m, "serving/start").enabled());
    assert!(!item(&m, "open-dashboard").enabled());
    assert!(!item(&m, menu::DEFAULT_MENU_ID).enabled());
    assert_eq!(label(&m, "default-model/none"), "No models found");
    assert!(!item(&m, "ssd-cache").enabled());
    assert_eq!(label(&m, "memory"), "Memory: –");
}

#[test]
fn menu_while_starting_and_restarting() {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t = Instant::now();
    s.update(Input::Disconnected("refused".into()), t);
    assert_eq!(menu::status_line(&s), "Starting…");
    s.update(Input::DaemonSpawned, t);
    s.update(
        Input::DaemonExited {
            how: "was killed by signal 9".into(),
            success: false,
        },
        t,
    );
    assert_eq!(
        menu::status_line(&s),
        "Daemon was killed by signal 9 · restarting in 1 s"
    );
}

#[test]
fn ssd_cache_item_when_the_daemon_has_one() {
    let mut s = connected();
    s.status.as_mut().unwrap().ssd_cache = SsdCache {
        enabled: true,
        available: true,
        bytes_used: 2_000_000_000,
        cap_bytes: 50_000_000_000,
        hit_rate: Some(0.5),
        ..Default::default()
    };
    let m = menu::build(&s);
    let cache = item(&m, "ssd-cache");
    assert!(cache.enabled());
    assert_eq!(cache.checked(), Some(true));
    assert_eq!(cache.label(), Some("SSD &cache (2.0 GB / 50.0 GB)"));
}

#[test]
fn login_item_states_in_the_menu() {
    let mut s = connected();
    s.update(Input::Login(LoginStatus::RequiresApproval), Instant::now());
    let m = menu::build(&s);
    assert_eq!(item(&m, "login-item").checked(), Some(true));
    assert!(item(&m, "login-item-settings").enabled());
    s.update(
        Input::Login(LoginStatus::Unsupported("only in the app bundle".into())),
        Instant::now(),
    );
    let m = menu::build(&s);
    assert!(!item(&m, "login-item").enabled());
    assert_eq!(
        label(&m, "login-item"),
        "&Launch at login (only in the app bundle)"
    );
}

#[test]
fn labels_from_the_daemon_are_literal_and_short() {
    let mut m = model("R&D/model", ModelState::Failed);
    m.reason = Some("x".repeat(100));
    let l = menu::model_label(&m);
    assert!(l.starts_with("R&&D/model — failed: xxx"), "{l}");
    assert!(l.ends_with('…'));
    assert!(l.chars().count() < 90);
    let mut loading = model("m", ModelState::Loading);
    loading.progress = Some(0.42);
    assert_eq!(menu::model_label(&loading), "m (loading 42%)");
}

#[test]
fn byte_units() {
    assert_eq!(menu::bytes(0), "0 B");
    assert_eq!(menu::bytes(999), "999 B");
    assert_eq!(menu::bytes(1_500), "1.5 KB");
    assert_eq!(menu::bytes(512_000_000), "512 MB");
    assert_eq!(menu::bytes(12_000_000_000), "12.0 GB");
    assert_eq!(menu::bytes(3_200_000_000_000), "3.2 TB");
}

#[test]
fn menu_ids_round_trip() {
    let actions = [
        MenuAction::StartDaemon,
        MenuAction::StartServing,
        MenuAction::StopServing,
        MenuAction::SetDefault("org/name".into()),
        MenuAction::SetDefault("a/b/c.gguf".into()),
        MenuAction::TogglePin("name".into()),
        MenuAction::ToggleSsdCache,
        MenuAction::OpenDashboard,
        MenuAction::OpenModelsFolder,
        MenuAction::ToggleLoginItem,
        MenuAction::OpenLoginItemsSettings,
        MenuAction::Quit,
        MenuAction::QuitAndStopDaemon,
    ];
    for a in actions {
        assert_eq!(MenuAction::from_id(&a.id()), Some(a.clone()), "{}", a.id());
    }
    for id in [
        "status",
        "memory",
        "default/",
        "pin",
        "nonsense/x",
        "default-model/none",
    ] {
        assert_eq!(MenuAction::from_id(id), None, "{id}");
    }
    // every clickable item of a full menu parses to an action
    let m = menu::build(&connected());
    fn walk(items: &[Item]) {
        for i in items {
            match i {
                Item::Submenu { items, .. } => walk(items),
                Item::Separator => {}
                _ if i.enabled() => assert!(
                    MenuAction::from_id(i.id().unwrap()).is_some(),
                    "{i:?} has no action"
                ),
                _ => {}
            }
        }
    }
    walk(&m.items);
}

#[test]
fn the_shape_changes_only_with_the_structure() {
    let mut s = connected();
    let before = menu::build(&s);
    s.status.as_mut().unwrap().memory.counted_bytes = 5;
    s.update(
        event(EventKind::ModelPinned {
            model: "small".into(),
        }),
        Instant::now(),
    );
    let after = menu::build(&s);
    assert_ne!(before, after);
    assert_eq!(before.shape(), after.shape());
    s.models.push(model("new", ModelState::Available));
    assert_ne!(before.shape(), menu::build(&s).shape());
}

// --- supervision --------------------------------------------------------------------------

#[test]
fn an_unreachable_daemon_is_started_once() {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t = Instant::now();
    assert_eq!(
        s.update(Input::Disconnected("refused".into()), t),
        [Effect::SpawnDaemon]
    );
    assert_eq!(s.daemon, Daemon::Starting);
    // the event stream keeps retrying while it starts: no second daemon
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    assert_eq!(s.update(Input::DaemonSpawned, t), []);
    assert!(s.owns_daemon);
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    assert_eq!(s.update(Input::Connected, t), [Effect::Refresh]);
    assert_eq!(s.daemon, Daemon::Running);
    assert!(item(&menu::build(&s), "quit-stop-daemon").enabled());
}

#[test]
fn a_crashing_daemon_is_restarted_with_backoff() {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t0 = Instant::now();
    s.update(Input::Disconnected("refused".into()), t0);
    let mut delays = Vec::new();
    for _ in 0..4 {
        s.update(Input::DaemonSpawned, t0);
        s.update(Input::Connected, t0);
        let effects = s.update(
            Input::DaemonExited {
                how: "exited with code 101".into(),
                success: false,
            },
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            notified(&effects),
            ["The Wuwei daemon stopped unexpectedly"]
        );
        let Some(Effect::ScheduleRestart(d)) = effects.last() else {
            panic!("{effects:?}")
        };
        delays.push(d.as_secs());
        assert!(!s.owns_daemon);
        // the stream notices the crash too: no extra start while a restart is planned
        assert_eq!(s.update(Input::Disconnected("eof".into()), t0), []);
        assert_eq!(s.update(Input::RestartDue, t0), [Effect::SpawnDaemon]);
        assert_eq!(s.daemon, Daemon::Starting);
    }
    assert_eq!(delays, [1, 2, 4, 8]);

    // Up for longer than STABLE_AFTER: the next crash restarts fast again.
    s.update(Input::DaemonSpawned, t0);
    s.update(Input::Connected, t0);
    let effects = s.update(
        Input::DaemonExited {
            how: "exited with code 1".into(),
            success: false,
        },
        t0 + crate::state::STABLE_AFTER + Duration::from_secs(1),
    );
    assert_eq!(
        effects.last(),
        Some(&Effect::ScheduleRestart(Duration::from_secs(1)))
    );
}

#[test]
fn a_restart_is_skipped_when_a_daemon_came_back_meanwhile() {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t = Instant::now();
    s.update(Input::Disconnected("refused".into()), t);
    s.update(Input::DaemonSpawned, t);
    s.update(
        Input::DaemonExited {
            how: "exited with code 1".into(),
            success: false,
        },
        t,
    );
    s.update(Input::Connected, t); // someone else's daemon answers now
    assert_eq!(s.update(Input::RestartDue, t), []);
}

#[test]
fn a_daemon_stopped_on_purpose_is_not_restarted_until_asked() {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t = Instant::now();
    s.update(Input::Disconnected("refused".into()), t);
    s.update(Input::DaemonSpawned, t);
    s.update(Input::Connected, t);
    let effects = s.update(
        Input::DaemonExited {
            how: "exited with code 0".into(),
            success: true,
        },
        t,
    );
    assert_eq!(effects, []);
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    let m = menu::build(&s);
    assert_eq!(label(&m, "status"), "Daemon not running (it was stopped)");
    let start = item(&m, "daemon/start");
    assert!(start.enabled());
    assert_eq!(start.label(), Some("&Start the daemon"));
    assert_eq!(
        s.update(Input::Menu(MenuAction::StartDaemon), t),
        [Effect::SpawnDaemon]
    );
    assert_eq!(s.daemon, Daemon::Starting);
}

#[test]
fn a_daemon_that_cannot_be_started_is_reported_once() {
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    let t = Instant::now();
    s.update(Input::Disconnected("refused".into()), t);
    let effects = s.update(Input::DaemonSpawnFailed("/x/wuwei: not found".into()), t);
    assert_eq!(notified(&effects), ["Wuwei could not start its daemon"]);
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    assert_eq!(
        menu::status_line(&s),
        "Daemon not running (could not start wuwei: /x/wuwei: not found)"
    );
}

#[test]
fn without_a_binary_the_app_only_watches() {
    let mut s = AppState::new(8686, false, LoginStatus::Off);
    let t = Instant::now();
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    assert_eq!(s.daemon, Daemon::NotRunning { why: None });
    assert_eq!(s.update(Input::Menu(MenuAction::StartDaemon), t), []);
    // a daemon that comes up is used
    s.update(Input::Connected, t);
    assert_eq!(s.daemon, Daemon::Running);
    // and one that goes away is reported
    s.update(Input::Disconnected("eof".into()), t);
    assert_eq!(menu::status_line(&s), "Daemon not running");
}

#[test]
fn the_login_item_keeps_the_daemon_running_on_macos_only() {
    assert_eq!(crate::login::KEEPS_DAEMON, cfg!(target_os = "macos"));
    assert!(LoginStatus::On.manages_daemon(true));
    assert!(!LoginStatus::On.manages_daemon(false));
    assert!(!LoginStatus::RequiresApproval.manages_daemon(true));
    let t = Instant::now();

    // Linux: the autostart entry starts the app, which supervises the daemon.
    let mut s = AppState::new(8686, true, LoginStatus::On);
    s.login_keeps_daemon = false;
    assert_eq!(
        s.update(Input::Disconnected("refused".into()), t),
        [Effect::SpawnDaemon]
    );

    // macOS: launchd runs the daemon; the app waits for it and starts none.
    let mut s = AppState::new(8686, true, LoginStatus::On);
    s.login_keeps_daemon = true;
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    let m = menu::build(&s);
    assert_eq!(
        label(&m, "status"),
        "Daemon not running (waiting for the login item to start it)"
    );
    assert!(m.find("daemon/start").is_none());

    // Turning the login item on while the app runs its own daemon hands over to launchd.
    let mut s = AppState::new(8686, true, LoginStatus::Off);
    s.login_keeps_daemon = true;
    s.update(Input::Disconnected("refused".into()), t);
    s.update(Input::DaemonSpawned, t);
    s.update(Input::Connected, t);
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleLoginItem), t),
        [Effect::SetLoginItem(true)]
    );
    assert_eq!(
        s.update(Input::Login(LoginStatus::On), t),
        [Effect::StopDaemon]
    );
    // its clean exit is not restarted, and launchd's daemon is used when it answers
    s.update(
        Input::DaemonExited {
            how: "exited with code 0".into(),
            success: true,
        },
        t,
    );
    assert_eq!(s.update(Input::Disconnected("refused".into()), t), []);
    s.update(Input::Connected, t);
    assert_eq!(s.daemon, Daemon::Running);
}

// --- events -------------------------------------------------------------------------------

#[test]
fn events_change_the_state_and_refresh() {
    let mut s = connected();
    let t = Instant::now();
    let e = s.update(event(EventKind::ServingChanged { serving: false }), t);
    assert_eq!(e, [Effect::Refresh]);
    assert!(!s.serving());
    s.update(
        event(EventKind::DefaultChanged {
            model: "big".into(),
        }),
        t,
    );
    assert_eq!(
        s.status.as_ref().unwrap().default_model.as_deref(),
        Some("big")
    );
    let defaults: Vec<_> = s
        .models
        .iter()
        .filter(|m| m.default)
        .map(|m| &m.id)
        .collect();
    assert_eq!(defaults, ["big"]);
    s.update(
        event(EventKind::ModelUnpinned {
            model: "big".into(),
        }),
        t,
    );
    assert!(!s.models.iter().any(|m| m.pinned));
    assert_eq!(s.update(event(EventKind::Unknown), t), [Effect::Refresh]);
}

#[test]
fn notifications_for_pressure_evictions_and_failed_loads_only() {
    let mut s = connected();
    let t = Instant::now();
    let e = s.update(
        event(EventKind::ModelEvicted {
            model: "small".into(),
            reason: EvictReason::MemoryPressure,
            freed_bytes: 300_000_000,
        }),
        t,
    );
    assert_eq!(
        e[0],
        Effect::Notify {
            title: "Unloaded small".into(),
            body: "Memory was running low, so Wuwei unloaded small (freed 300 MB).".into()
        }
    );
    for reason in [EvictReason::Ttl, EvictReason::Budget] {
        let e = s.update(
            event(EventKind::ModelEvicted {
                model: "small".into(),
                reason,
                freed_bytes: 1,
            }),
            t,
        );
        assert_eq!(notified(&e), Vec::<String>::new());
    }
    let e = s.update(
        event(EventKind::LoadFailed {
            model: "big".into(),
            error: "needs 9 GB more than the budget".into(),
        }),
        t,
    );
    assert_eq!(
        e[0],
        Effect::Notify {
            title: "Could not load big".into(),
            body: "needs 9 GB more than the budget".into()
        }
    );
}

// --- clicks -------------------------------------------------------------------------------

#[test]
fn serving_clicks_become_calls_and_show_at_once() {
    let mut s = connected();
    let t = Instant::now();
    assert_eq!(
        s.update(Input::Menu(MenuAction::StopServing), t),
        [Effect::Api(ApiCall::SetServing(false))]
    );
    assert!(menu::build(&s).find("serving/start").is_some());
    assert_eq!(
        s.update(Input::Menu(MenuAction::StartServing), t),
        [Effect::Api(ApiCall::SetServing(true))]
    );
    // no daemon: nothing to call
    let mut idle = AppState::new(8686, false, LoginStatus::Off);
    assert_eq!(idle.update(Input::Menu(MenuAction::StartServing), t), []);
}

#[test]
fn model_clicks() {
    let mut s = connected();
    let t = Instant::now();
    assert_eq!(
        s.update(Input::Menu(MenuAction::SetDefault("big".into())), t),
        [Effect::Api(ApiCall::SetDefault("big".into()))]
    );
    assert_eq!(item(&menu::build(&s), "default/big").checked(), Some(true));
    // incomplete and unknown models are not chosen
    assert_eq!(
        s.update(Input::Menu(MenuAction::SetDefault("org/broken".into())), t),
        []
    );
    assert_eq!(
        s.update(Input::Menu(MenuAction::TogglePin("nope".into())), t),
        []
    );
    assert_eq!(
        s.update(Input::Menu(MenuAction::TogglePin("small".into())), t),
        [Effect::Api(ApiCall::Pin("small".into()))]
    );
    assert_eq!(
        s.update(Input::Menu(MenuAction::TogglePin("big".into())), t),
        [Effect::Api(ApiCall::Unpin("big".into()))]
    );
    // a failed call says so and fetches the truth again
    let e = s.update(
        Input::ApiFailed {
            call: ApiCall::Pin("small".into()),
            error: "does not fit (HTTP 507)".into(),
        },
        t,
    );
    assert_eq!(notified(&e), ["Could not pin small"]);
    assert_eq!(e.last(), Some(&Effect::Refresh));
}

#[test]
fn ssd_cache_click_only_when_available() {
    let mut s = connected();
    let t = Instant::now();
    assert_eq!(s.update(Input::Menu(MenuAction::ToggleSsdCache), t), []);
    s.status.as_mut().unwrap().ssd_cache.available = true;
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleSsdCache), t),
        [
            Effect::Api(ApiCall::SetSsdCache(true)),
            Effect::SaveSsdChoice(true)
        ]
    );
    assert!(s.status.as_ref().unwrap().ssd_cache.enabled);
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleSsdCache), t),
        [
            Effect::Api(ApiCall::SetSsdCache(false)),
            Effect::SaveSsdChoice(false)
        ]
    );
}

#[test]
fn the_ssd_choice_is_kept_and_sent_again_to_a_restarted_daemon() {
    let t = Instant::now();
    let mut s = connected();
    s.status.as_mut().unwrap().ssd_cache = SsdCache {
        enabled: true,
        available: true,
        ..Default::default()
    };
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleSsdCache), t),
        [
            Effect::Api(ApiCall::SetSsdCache(false)),
            Effect::SaveSsdChoice(false)
        ]
    );
    assert_eq!(s.ssd_wanted, Some(false));
    // The daemon restarts; its config turns the tier on again: the app switches it off once.
    s.update(Input::Disconnected("eof".into()), t);
    s.update(Input::Connected, t);
    let mut fresh = status(true, &[], None);
    fresh.ssd_cache = SsdCache {
        enabled: true,
        available: true,
        ..Default::default()
    };
    let snapshot = |st: &Status| Input::Snapshot {
        status: Box::new(st.clone()),
        models: models(),
    };
    assert_eq!(
        s.update(snapshot(&fresh), t),
        [Effect::Api(ApiCall::SetSsdCache(false))]
    );
    assert_eq!(item(&menu::build(&s), "ssd-cache").checked(), Some(false));
    // not again on every refresh of the same connection (the user may use the dashboard)
    assert_eq!(s.update(snapshot(&fresh), t), []);
    // a daemon that already agrees gets nothing; one without a tier neither
    s.update(Input::Connected, t);
    fresh.ssd_cache.enabled = false;
    assert_eq!(s.update(snapshot(&fresh), t), []);
    s.update(Input::Connected, t);
    fresh.ssd_cache = SsdCache::default();
    assert_eq!(s.update(snapshot(&fresh), t), []);
    // no choice made: the daemon's config decides
    let mut s = connected();
    s.update(Input::Connected, t);
    assert_eq!(s.update(snapshot(&fresh), t), []);
}

#[test]
fn cache_events_update_the_item_without_refreshing_every_second() {
    let t = Instant::now();
    let mut s = connected();
    let tier = SsdCache {
        enabled: true,
        available: true,
        bytes_used: 3_000_000_000,
        cap_bytes: 10_000_000_000,
        hit_rate: Some(0.25),
        ..Default::default()
    };
    assert_eq!(
        s.update(
            event(EventKind::CacheStats {
                ssd_cache: Some(tier.clone()),
                ram: None,
            }),
            t
        ),
        []
    );
    assert_eq!(
        label(&menu::build(&s), "ssd-cache"),
        "SSD &cache (3.0 GB / 10.0 GB)"
    );
    let off = SsdCache {
        enabled: false,
        ..tier
    };
    assert_eq!(
        s.update(
            event(EventKind::CacheToggled {
                enabled: Some(false),
                ssd_cache: Some(off)
            }),
            t
        ),
        [Effect::Refresh]
    );
    assert_eq!(item(&menu::build(&s), "ssd-cache").checked(), Some(false));
}

#[test]
fn login_item_clicks() {
    let t = Instant::now();
    let mut s = connected();
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleLoginItem), t),
        [Effect::SetLoginItem(true)]
    );
    s.update(Input::Login(LoginStatus::On), t);
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleLoginItem), t),
        [Effect::SetLoginItem(false)]
    );
    s.update(Input::Login(LoginStatus::RequiresApproval), t);
    assert_eq!(
        s.update(Input::Menu(MenuAction::ToggleLoginItem), t),
        [Effect::OpenLoginItemsSettings]
    );
    s.update(Input::Login(LoginStatus::Unsupported("no".into())), t);
    assert_eq!(s.update(Input::Menu(MenuAction::ToggleLoginItem), t), []);
}

#[test]
fn opening_things() {
    let mut s = connected();
    let t = Instant::now();
    assert_eq!(
        s.update(Input::Menu(MenuAction::OpenDashboard), t),
        [Effect::OpenDashboard]
    );
    assert_eq!(
        s.update(Input::Menu(MenuAction::OpenModelsFolder), t),
        [Effect::OpenModelsFolder]
    );
}

#[test]
fn quitting_leaves_or_stops_the_daemon() {
    let t = Instant::now();
    let mut s = connected();
    assert_eq!(s.update(Input::Menu(MenuAction::Quit), t), [Effect::Quit]);
    // a daemon the app did not start is asked through the admin API
    let mut s = connected();
    assert_eq!(
        s.update(Input::Menu(MenuAction::QuitAndStopDaemon), t),
        [Effect::ShutdownDaemon, Effect::Quit]
    );
    // none reachable and none of its own: nothing to stop
    let mut s = AppState::new(8686, false, LoginStatus::Off);
    s.update(Input::Disconnected("refused".into()), t);
    assert!(!item(&menu::build(&s), "quit-stop-daemon").enabled());
    assert_eq!(
        s.update(Input::Menu(MenuAction::QuitAndStopDaemon), t),
        [Effect::Quit]
    );

    let mut s = AppState::new(8686, true, LoginStatus::Off);
    s.update(Input::Disconnected("refused".into()), t);
    s.update(Input::DaemonSpawned, t);
    s.update(Input::Connected, t);
    assert_eq!(
        s.update(Input::Menu(MenuAction::QuitAndStopDaemon), t),
        [Effect::StopDaemon, Effect::Quit]
    );
    // its exit is expected now: no restart, no notification
    let e = s.update(
        Input::DaemonExited {
            how: "exited with code 0".into(),
            success: true,
        },
        t,
    );
    assert_eq!(e, []);
    assert_eq!(s.update(Input::Disconnected("eof".into()), t), []);
}
