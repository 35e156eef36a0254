//! What the app knows, and how each thing that happens changes it.
//!
//! `AppState::update` is the whole behaviour of the app as a pure function of (state, input,
//! time): it changes the state and answers the effects to carry out (API calls, starting the
//! daemon, notifications, …). The controller feeds it inputs from the daemon, the child
//! process and the menu, and carries out the effects; the menu is drawn from the state by
//! `menu::build`. Nothing here touches a display, a socket or a process.

use std::time::{Duration, Instant};

use wuwei_api::{Event, EventKind, EvictReason, ModelStatus, Status};

use crate::action::MenuAction;
use crate::login::LoginStatus;
use crate::supervisor::Backoff;
use crate::units::{bytes, secs};

/// The daemon as the app sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Daemon {
    /// The app has just started and not yet tried to connect.
    Connecting,
    /// Connected to its event stream.
    Running,
    /// The app started it and waits for it to answer.
    Starting,
    /// Not reachable, and the app is not starting it; `why` says what went wrong, if anything.
    NotRunning { why: Option<String> },
    /// The daemon the app started exited unexpectedly; it is started again after `delay`.
    Restarting {
        attempt: u32,
        exit: String,
        delay: Duration,
    },
}

/// An admin API call the app makes for a menu action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCall {
    SetServing(bool),
    SetDefault(String),
    Pin(String),
    Unpin(String),
    SetSsdCache(bool),
}

impl ApiCall {
    /// How a failure is described to the user.
    pub fn describe(&self) -> String {
        match self {
            ApiCall::SetServing(true) => "start serving".into(),
            ApiCall::SetServing(false) => "stop serving".into(),
            ApiCall::SetDefault(m) => format!("make {m} the default model"),
            ApiCall::Pin(m) => format!("pin {m}"),
            ApiCall::Unpin(m) => format!("unpin {m}"),
            ApiCall::SetSsdCache(true) => "turn the SSD cache on".into(),
            ApiCall::SetSsdCache(false) => "turn the SSD cache off".into(),
        }
    }
}

/// What the controller does for the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Fetch status and models again.
    Refresh,
    Api(ApiCall),
    Notify {
        title: String,
        body: String,
    },
    /// Start the daemon as a child process.
    SpawnDaemon,
    /// Send `RestartDue` after this long.
    ScheduleRestart(Duration),
    /// End the daemon child (SIGTERM, so it drains and exits cleanly).
    StopDaemon,
    /// Ask a daemon the app did not start to end (admin API; it drains and exits cleanly),
    /// and wait for its answer: a quit follows.
    ShutdownDaemon,
    OpenDashboard,
    OpenModelsFolder,
    SetLoginItem(bool),
    OpenLoginItemsSettings,
    /// Remember the user's SSD cache choice (`AppState::ssd_wanted`) across restarts.
    SaveSsdChoice(bool),
    Quit,
}

/// Something that happened.
// An `Event` carries the cache numbers (a few hundred bytes); inputs pass one at a time
// through a channel, so moving that much costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The event stream is open.
    Connected,
    /// The event stream could not be opened or broke.
    Disconnected(String),
    Event(Event),
    /// Fresh answers of `/status` and `/models`.
    Snapshot {
        status: Box<Status>,
        models: Vec<ModelStatus>,
    },
    /// The daemon child process started.
    DaemonSpawned,
    DaemonSpawnFailed(String),
    /// The daemon child process ended: how, in words, and whether it exited successfully
    /// (the daemon exits 0 only when asked to stop, e.g. by SIGTERM).
    DaemonExited {
        how: String,
        success: bool,
    },
    RestartDue,
    Menu(MenuAction),
    ApiFailed {
        call: ApiCall,
        error: String,
    },
    Login(LoginStatus),
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub daemon: Daemon,
    /// The last status answer; kept while the daemon is away so the menu does not jump.
    pub status: Option<Status>,
    pub models: Vec<ModelStatus>,
    pub login: LoginStatus,
    /// The port the app expects the daemon on (the status line's while it is not running).
    pub port: u16,
    /// May the app start the daemon (a daemon binary was found and supervision is on).
    pub can_spawn: bool,
    /// A daemon child of this app is running.
    pub owns_daemon: bool,
    /// The user's SSD cache choice. The daemon does not keep a runtime switch across restarts
    /// (its config decides at start), so the app keeps it and sends it again on connecting.
    pub ssd_wanted: Option<bool>,
    /// The choice was applied to the daemon of this connection.
    ssd_synced: bool,
    /// Do not start the daemon on its own again until the user asks ("Start daemon"): it
    /// was stopped on purpose, or it cannot be started.
    pub hold_spawn: bool,
    /// Quitting: a daemon exit is expected, not a crash.
    pub quitting: bool,
    /// The platform's login item runs the daemon under its own supervisor (macOS: a launchd
    /// agent); while it is on, the app starts no daemon of its own.
    pub login_keeps_daemon: bool,
    backoff: Backoff,
    running_since: Option<Instant>,
}

/// A daemon that stays up this long is considered recovered: the next crash restarts fast.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

impl AppState {
    pub fn new(port: u16, can_spawn: bool, login: LoginStatus) -> Self {
        AppState {
            daemon: Daemon::Connecting,
            status: None,
            models: Vec::new(),
            login,
            port,
            can_spawn,
            owns_daemon: false,
            hold_spawn: false,
            ssd_wanted: None,
            ssd_synced: false,
            quitting: false,
            login_keeps_daemon: crate::login::KEEPS_DAEMON,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            running_since: None,
        }
    }

    pub fn serving(&self) -> bool {
        self.daemon == Daemon::Running && self.status.as_ref().is_some_and(|s| s.serving)
    }

    /// Whether the login item keeps the daemon running now.
    pub fn login_runs_daemon(&self) -> bool {
        self.login.manages_daemon(self.login_keeps_daemon)
    }

    /// Whether the app should start the daemon itself now that it is not reachable. Not
    /// when the platform's login item keeps it running (launchd restarts it on its own).
    fn should_spawn(&self) -> bool {
        self.can_spawn
            && !self.owns_daemon
            && !self.hold_spawn
            && !self.quitting
            && !self.login_runs_daemon()
    }

    pub fn update(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        match input {
            Input::Connected => {
                self.daemon = Daemon::Running;
                self.running_since = Some(now);
                self.ssd_synced = false;
                vec![Effect::Refresh]
            }
            Input::Disconnected(_) => self.disconnected(),
            Input::Event(event) => self.event(event),
            Input::Snapshot { status, models } => {
                self.port = status.port;
                self.status = Some(*status);
                self.models = models;
                self.sync_ssd_choice()
            }
            Input::DaemonSpawned => {
                self.owns_daemon = true;
                if self.daemon != Daemon::Running {
                    self.daemon = Daemon::Starting;
                }
                vec![]
            }
            Input::DaemonSpawnFailed(error) => {
                self.hold_spawn = true;
                self.daemon = Daemon::NotRunning {
                    why: Some(format!("could not start wuwei: {error}")),
                };
                vec![notify("Wuwei could not start its daemon", error)]
            }
            Input::DaemonExited { how, success } => self.daemon_exited(how, success, now),
            Input::RestartDue => match self.daemon {
                // Something else came up meanwhile (or the user quit): nothing to restart.
                Daemon::Restarting { .. } if self.should_spawn() => {
                    self.daemon = Daemon::Starting;
                    vec![Effect::SpawnDaemon]
                }
                _ => vec![],
            },
            Input::Menu(action) => self.menu(action),
            Input::ApiFailed { call, error } => {
                // The optimistic change is undone by fetching the truth again.
                vec![
                    notify(format!("Could not {}", call.describe()), error),
                    Effect::Refresh,
                ]
            }
            Input::Login(status) => {
                self.login = status;
                // The login item now runs the daemon (launchd starts one at once): hand over
                // by stopping the app's own, which would hold the port.
                if self.login_runs_daemon() && self.owns_daemon {
                    vec![Effect::StopDaemon]
                } else {
                    vec![]
                }
            }
        }
    }

    fn disconnected(&mut self) -> Vec<Effect> {
        match self.daemon {
            // The app's own daemon is on its way up, or its exit will say what happened.
            Daemon::Starting | Daemon::Restarting { .. } => vec![],
            _ if self.owns_daemon => {
                self.daemon = Daemon::Starting;
                vec![]
            }
            _ if self.should_spawn() => {
                self.daemon = Daemon::Starting;
                vec![Effect::SpawnDaemon]
            }
            // Still away: keep what the status line says about why.
            Daemon::NotRunning { .. } => vec![],
            _ => {
                let why = self
                    .login_runs_daemon()
                    .then(|| "waiting for the login item to start it".to_string());
                self.daemon = Daemon::NotRunning { why };
                vec![]
            }
        }
    }

    fn daemon_exited(&mut self, how: String, success: bool, now: Instant) -> Vec<Effect> {
        self.owns_daemon = false;
        if self.quitting {
            return vec![];
        }
        if success {
            // Stopped on purpose (someone sent it SIGTERM): not a crash, and not to be
            // undone behind the user's back.
            self.hold_spawn = true;
            self.running_since = None;
            self.daemon = Daemon::NotRunning {
                why: Some("it was stopped".into()),
            };
            return vec![];
        }
        if self
            .running_since
            .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER)
        {
            self.backoff.reset();
        }
        self.running_since = None;
        let delay = self.backoff.next_delay();
        let attempt = self.backoff.attempts();
        self.daemon = Daemon::Restarting {
            attempt,
            exit: how.clone(),
            delay,
        };
        vec![
            notify(
                "The Wuwei daemon stopped unexpectedly",
                format!("It {how}. Restarting in {}.", secs(delay)),
            ),
            Effect::ScheduleRestart(delay),
        ]
    }

    fn event(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        // Cheap local changes make the menu right at once; the refresh after every event
        // brings the numbers (memory, loaded models) that events do not carry.
        match event.kind {
            EventKind::ServingChanged { serving } => {
                if let Some(s) = &mut self.status {
                    s.serving = serving;
                    s.state = if serving { "serving" } else { "stopped" }.into();
                }
            }
            EventKind::DefaultChanged { model } => self.set_default_local(&model),
            EventKind::ModelPinned { model } => self.set_pinned_local(&model, true),
            EventKind::ModelUnpinned { model } => self.set_pinned_local(&model, false),
            EventKind::ModelEvicted {
                model,
                reason: EvictReason::MemoryPressure,
                freed_bytes,
            } => effects.push(notify(
                format!("Unloaded {model}"),
                format!(
                    "Memory was running low, so Wuwei unloaded {model} (freed {}).",
                    bytes(freed_bytes)
                ),
            )),
            EventKind::LoadFailed { model, error } => {
                effects.push(notify(format!("Could not load {model}"), error))
            }
            EventKind::CacheToggled { enabled, ssd_cache } => {
                if let Some(s) = &mut self.status {
                    match (ssd_cache, enabled) {
                        (Some(cache), _) => s.ssd_cache = cache,
                        (None, Some(on)) => s.ssd_cache.enabled = on,
                        (None, None) => {}
                    }
                }
            }
            // Sent every second while the cache works: it carries all the menu shows of the
            // cache, and a refresh per second would be waste.
            EventKind::CacheStats { ssd_cache, .. } => {
                if let (Some(s), Some(cache)) = (&mut self.status, ssd_cache) {
                    s.ssd_cache = cache;
                }
                return effects;
            }
            _ => {}
        }
        effects.push(Effect::Refresh);
        effects
    }

    /// Once per connection: a (re)started daemon gets the user's SSD choice again.
    fn sync_ssd_choice(&mut self) -> Vec<Effect> {
        let (Some(wanted), Some(cache)) = (
            self.ssd_wanted,
            self.status.as_mut().map(|s| &mut s.ssd_cache),
        ) else {
            return vec![];
        };
        if self.ssd_synced || self.daemon != Daemon::Running || !cache.available {
            return vec![];
        }
        self.ssd_synced = true;
        if cache.enabled == wanted {
            return vec![];
        }
        cache.enabled = wanted;
        vec![Effect::Api(ApiCall::SetSsdCache(wanted))]
    }

    fn set_default_local(&mut self, model: &str) {
        if let Some(s) = &mut self.status {
            s.default_model = Some(model.to_string());
        }
        for m in &mut self.models {
            m.default = m.id == model;
        }
    }

    fn set_pinned_local(&mut self, model: &str, pinned: bool) {
        for m in self.models.iter_mut().filter(|m| m.id == model) {
            m.pinned = pinned;
        }
    }

    /// A click: applied to the state at once (the menu shows the change while the call runs;
    /// a failed call refreshes it back) and turned into effects.
    fn menu(&mut self, action: MenuAction) -> Vec<Effect> {
        use MenuAction as A;
        let connected = self.daemon == Daemon::Running;
        match action {
            A::StartDaemon => {
                self.hold_spawn = false;
                if self.should_spawn() && !matches!(self.daemon, Daemon::Running) {
                    self.daemon = Daemon::Starting;
                    vec![Effect::SpawnDaemon]
                } else {
                    vec![]
                }
            }
            A::StartServing | A::StopServing if !connected => vec![],
            A::StartServing | A::StopServing => {
                let on = action == A::StartServing;
                if let Some(s) = &mut self.status {
                    s.serving = on;
                }
                vec![Effect::Api(ApiCall::SetServing(on))]
            }
            A::SetDefault(_) | A::TogglePin(_) | A::ToggleSsdCache if !connected => vec![],
            A::SetDefault(id) => {
                if !self.usable(&id) {
                    return vec![];
                }
                self.set_default_local(&id);
                vec![Effect::Api(ApiCall::SetDefault(id))]
            }
            A::TogglePin(id) => {
                let Some(m) = self.models.iter().find(|m| m.id == id) else {
                    return vec![];
                };
                if !m.state.usable() {
                    return vec![];
                }
                let pin = !m.pinned;
                self.set_pinned_local(&id, pin);
                vec![Effect::Api(if pin {
                    ApiCall::Pin(id)
                } else {
                    ApiCall::Unpin(id)
                })]
            }
            A::ToggleSsdCache => {
                let Some(cache) = self.status.as_mut().map(|s| &mut s.ssd_cache) else {
                    return vec![];
                };
                if !cache.available {
                    return vec![];
                }
                cache.enabled = !cache.enabled;
                let on = cache.enabled;
                self.ssd_wanted = Some(on);
                vec![
                    Effect::Api(ApiCall::SetSsdCache(on)),
                    Effect::SaveSsdChoice(on),
                ]
            }
            A::OpenDashboard => vec![Effect::OpenDashboard],
            A::OpenModelsFolder => vec![Effect::OpenModelsFolder],
            A::ToggleLoginItem => match self.login {
                LoginStatus::Unsupported(_) => vec![],
                LoginStatus::RequiresApproval => vec![Effect::OpenLoginItemsSettings],
                _ => vec![Effect::SetLoginItem(!self.login.is_on())],
            },
            A::OpenLoginItemsSettings => vec![Effect::OpenLoginItemsSettings],
            A::Quit => {
                self.quitting = true;
                vec![Effect::Quit]
            }
            A::QuitAndStopDaemon => {
                self.quitting = true;
                if self.owns_daemon {
                    vec![Effect::StopDaemon, Effect::Quit]
                } else if self.daemon == Daemon::Running {
                    // The login item's or one started by hand.
                    vec![Effect::ShutdownDaemon, Effect::Quit]
                } else {
                    vec![Effect::Quit]
                }
            }
        }
    }

    fn usable(&self, id: &str) -> bool {
        self.models.iter().any(|m| m.id == id && m.state.usable())
    }
}

fn notify(title: impl Into<String>, body: impl Into<String>) -> Effect {
    Effect::Notify {
        title: title.into(),
        body: body.into(),
    }
}
