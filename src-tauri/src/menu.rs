//! The tray menu as data: `build(&AppState)` describes every item (label, enabled, checked),
//! and each clickable item's id parses back to a `MenuAction`. The native layer (`tray.rs`)
//! only turns this description into tauri menu items and routes clicks.
//!
//! Labels may carry one `&` before a mnemonic letter (GTK underlines it and the letter
//! activates the item in an open menu; macOS drops it); text that comes from the daemon, such
//! as model ids, has its `&` doubled so it shows as is.

use wuwei_api::{ModelState, ModelStatus};

pub use crate::action::MenuAction;
use crate::login::LoginStatus;
use crate::state::{AppState, Daemon};
pub use crate::units::bytes;
use crate::units::secs;

/// One menu entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A plain item: an action, or a line of text when disabled.
    Text {
        id: String,
        label: String,
        enabled: bool,
    },
    Check {
        id: String,
        label: String,
        checked: bool,
        enabled: bool,
    },
    /// One choice of a group; drawn as a check item (tauri menus have no radio items), with
    /// exactly one of the group checked.
    Radio {
        id: String,
        label: String,
        checked: bool,
        enabled: bool,
    },
    Submenu {
        id: String,
        label: String,
        enabled: bool,
        items: Vec<Item>,
    },
    Separator,
}

impl Item {
    pub fn id(&self) -> Option<&str> {
        match self {
            Item::Text { id, .. }
            | Item::Check { id, .. }
            | Item::Radio { id, .. }
            | Item::Submenu { id, .. } => Some(id),
            Item::Separator => None,
        }
    }

    pub fn label(&self) -> Option<&str> {
        match self {
            Item::Text { label, .. }
            | Item::Check { label, .. }
            | Item::Radio { label, .. }
            | Item::Submenu { label, .. } => Some(label),
            Item::Separator => None,
        }
    }

    pub fn enabled(&self) -> bool {
        match self {
            Item::Text { enabled, .. }
            | Item::Check { enabled, .. }
            | Item::Radio { enabled, .. }
            | Item::Submenu { enabled, .. } => *enabled,
            Item::Separator => false,
        }
    }

    pub fn checked(&self) -> Option<bool> {
        match self {
            Item::Check { checked, .. } | Item::Radio { checked, .. } => Some(*checked),
            _ => None,
        }
    }
}

/// The whole menu.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MenuModel {
    pub items: Vec<Item>,
}

/// The structure of a menu without its texts and states: when two models have the same
/// shape, the native menu is updated in place instead of being rebuilt (rebuilding closes a
/// menu the user has open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Text(String),
    Check(String),
    Submenu(String, Vec<Shape>),
    Separator,
}

impl MenuModel {
    pub fn shape(&self) -> Vec<Shape> {
        fn of(items: &[Item]) -> Vec<Shape> {
            items
                .iter()
                .map(|i| match i {
                    Item::Text { id, .. } => Shape::Text(id.clone()),
                    Item::Check { id, .. } | Item::Radio { id, .. } => Shape::Check(id.clone()),
                    Item::Submenu { id, items, .. } => Shape::Submenu(id.clone(), of(items)),
                    Item::Separator => Shape::Separator,
                })
                .collect()
        }
        of(&self.items)
    }

    /// Depth-first search by id.
    pub fn find(&self, id: &str) -> Option<&Item> {
        fn walk<'a>(items: &'a [Item], id: &str) -> Option<&'a Item> {
            items.iter().find_map(|i| match i {
                _ if i.id() == Some(id) => Some(i),
                Item::Submenu { items, .. } => walk(items, id),
                _ => None,
            })
        }
        walk(&self.items, id)
    }
}

pub const STATUS_ID: &str = "status";
pub const MEMORY_ID: &str = "memory";
pub const DEFAULT_MENU_ID: &str = "default-model";
pub const PINNED_MENU_ID: &str = "pinned";

/// Text from outside shown literally (no mnemonic).
fn literal(s: &str) -> String {
    s.replace('&', "&&")
}

/// The status line.
pub fn status_line(state: &AppState) -> String {
    match &state.daemon {
        Daemon::Connecting => "Connecting to the daemon…".into(),
        Daemon::Starting => "Starting…".into(),
        Daemon::NotRunning { why: None } => "Daemon not running".into(),
        Daemon::NotRunning { why: Some(why) } => format!("Daemon not running ({why})"),
        Daemon::Restarting { exit, delay, .. } => {
            format!("Daemon {exit} · restarting in {}", secs(*delay))
        }
        Daemon::Running => match &state.status {
            None => "Connected…".into(),
            Some(s) if s.serving => {
                let n = s.loaded.len();
                let models = if n == 1 { "model" } else { "models" };
                format!("Serving on :{} · {n} {models} loaded", s.port)
            }
            Some(_) => "Stopped".into(),
        },
    }
}

/// The memory line: what loaded models count for against the budget.
pub fn memory_line(state: &AppState) -> String {
    match &state.status {
        Some(s) if s.memory.budget_bytes > 0 => format!(
            "Memory: {} / {} budget",
            bytes(s.memory.counted_bytes),
            bytes(s.memory.budget_bytes)
        ),
        _ => "Memory: –".into(),
    }
}

/// How a model is named in the model submenus.
pub fn model_label(m: &ModelStatus) -> String {
    let id = literal(&m.id);
    let reason = |r: &Option<String>| {
        let r = r.as_deref().unwrap_or("unknown reason");
        // Menus are one line: keep long reasons short.
        let short: String = r.chars().take(60).collect();
        let short = if short.len() < r.len() {
            format!("{short}…")
        } else {
            short
        };
        literal(&short)
    };
    match m.state {
        ModelState::Loaded => format!("{id} (loaded)"),
        ModelState::Loading => match m.progress {
            Some(p) => format!("{id} (loading {:.0}%)", p * 100.0),
            None => format!("{id} (loading)"),
        },
        ModelState::Unloading => format!("{id} (unloading)"),
        ModelState::Incomplete => format!("{id} — incomplete: {}", reason(&m.reason)),
        ModelState::Failed => format!("{id} — failed: {}", reason(&m.reason)),
        ModelState::Available | ModelState::Other => id,
    }
}

/// The menu for a state.
pub fn build(state: &AppState) -> MenuModel {
    let connected = state.daemon == Daemon::Running && state.status.is_some();
    let status = state.status.as_ref();
    let mut items = vec![
        Item::Text {
            id: STATUS_ID.into(),
            label: literal(&status_line(state)),
            enabled: false,
        },
        Item::Separator,
    ];

    // One item that says what it will do; the mnemonic is `s` either way. While the daemon
    // is down and the app may start it, the item starts the daemon instead.
    let serving = state.serving();
    let (action, label, enabled) = match &state.daemon {
        Daemon::NotRunning { .. } if state.can_spawn && !state.login_runs_daemon() => {
            (MenuAction::StartDaemon, "&Start the daemon", true)
        }
        _ if serving => (MenuAction::StopServing, "&Stop serving", connected),
        _ => (MenuAction::StartServing, "&Start serving", connected),
    };
    items.push(Item::Text {
        id: action.id(),
        label: label.into(),
        enabled,
    });

    let mut models: Vec<&ModelStatus> = state.models.iter().collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    let default_model = status.and_then(|s| s.default_model.as_deref());
    let default_items: Vec<Item> = models
        .iter()
        .map(|m| Item::Radio {
            id: MenuAction::SetDefault(m.id.clone()).id(),
            label: model_label(m),
            checked: default_model == Some(m.id.as_str()),
            enabled: connected && m.state.usable(),
        })
        .collect();
    let pinned_items: Vec<Item> = models
        .iter()
        .map(|m| Item::Check {
            id: MenuAction::TogglePin(m.id.clone()).id(),
            label: model_label(m),
            checked: m.pinned,
            enabled: connected && m.state.usable(),
        })
        .collect();
    let placeholder = |id: &str| {
        vec![Item::Text {
            id: id.into(),
            label: "No models found".into(),
            enabled: false,
        }]
    };
    let has_models = !models.is_empty();
    items.push(Item::Submenu {
        id: DEFAULT_MENU_ID.into(),
        label: "De&fault model".into(),
        enabled: has_models,
        items: if has_models {
            default_items
        } else {
            placeholder("default-model/none")
        },
    });
    items.push(Item::Submenu {
        id: PINNED_MENU_ID.into(),
        label: "&Pinned".into(),
        enabled: has_models,
        items: if has_models {
            pinned_items
        } else {
            placeholder("pinned/none")
        },
    });

    let cache = status.map(|s| &s.ssd_cache);
    let cache_available = cache.is_some_and(|c| c.available);
    items.push(Item::Check {
        id: MenuAction::ToggleSsdCache.id(),
        label: match cache {
            Some(c) if c.available && c.enabled => format!(
                "SSD &cache ({} / {})",
                bytes(c.bytes_used),
                bytes(c.cap_bytes)
            ),
            Some(c) if c.available => "SSD &cache".into(),
            _ => "SSD &cache (not available)".into(),
        },
        checked: cache.is_some_and(|c| c.enabled),
        enabled: connected && cache_available,
    });
    items.push(Item::Text {
        id: MEMORY_ID.into(),
        label: memory_line(state),
        enabled: false,
    });
    items.push(Item::Separator);

    items.push(Item::Text {
        id: MenuAction::OpenDashboard.id(),
        label: "Open &dashboard".into(),
        enabled: connected,
    });
    items.push(Item::Text {
        id: MenuAction::OpenModelsFolder.id(),
        label: "Open &models folder".into(),
        enabled: true,
    });
    items.push(Item::Check {
        id: MenuAction::ToggleLoginItem.id(),
        label: match &state.login {
            LoginStatus::Unsupported(why) => format!("&Launch at login ({})", literal(why)),
            _ => "&Launch at login".into(),
        },
        checked: state.login.is_on(),
        enabled: !matches!(state.login, LoginStatus::Unsupported(_)),
    });
    if state.login == LoginStatus::RequiresApproval {
        items.push(Item::Text {
            id: MenuAction::OpenLoginItemsSettings.id(),
            label: "Requires approval: open Login Items settings…".into(),
            enabled: true,
        });
    }
    items.push(Item::Separator);
    items.push(Item::Text {
        id: MenuAction::Quit.id(),
        label: "&Quit Wuwei".into(),
        enabled: true,
    });
    // Quitting asks whether to stop the daemon too, as a second item rather than a dialog:
    // a menu item works the same on every platform and under test. The app ends a daemon it
    // started with SIGTERM and any other it is connected to through the admin API.
    items.push(Item::Text {
        id: MenuAction::QuitAndStopDaemon.id(),
        label: "Quit and s&top the daemon".into(),
        enabled: state.owns_daemon || state.daemon == Daemon::Running,
    });
    MenuModel { items }
}
