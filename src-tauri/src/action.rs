//! What a click on a menu item asks for, and the item ids that carry it: the input the menu
//! gives the app's state (`state`), which draws the menu (`menu`) from it.

/// What a click asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuAction {
    /// Starts the daemon after it was stopped or could not be started.
    StartDaemon,
    StartServing,
    StopServing,
    SetDefault(String),
    TogglePin(String),
    ToggleSsdCache,
    OpenDashboard,
    OpenModelsFolder,
    ToggleLoginItem,
    OpenLoginItemsSettings,
    /// Quits the app; the daemon keeps running.
    Quit,
    /// Quits the app and stops the daemon it started.
    QuitAndStopDaemon,
}

impl MenuAction {
    /// The menu item id. Model ids may contain `/`: only the first `/` separates the kind.
    pub fn id(&self) -> String {
        match self {
            MenuAction::StartDaemon => "daemon/start".into(),
            MenuAction::StartServing => "serving/start".into(),
            MenuAction::StopServing => "serving/stop".into(),
            MenuAction::SetDefault(m) => format!("default/{m}"),
            MenuAction::TogglePin(m) => format!("pin/{m}"),
            MenuAction::ToggleSsdCache => "ssd-cache".into(),
            MenuAction::OpenDashboard => "open-dashboard".into(),
            MenuAction::OpenModelsFolder => "open-models-folder".into(),
            MenuAction::ToggleLoginItem => "login-item".into(),
            MenuAction::OpenLoginItemsSettings => "login-item-settings".into(),
            MenuAction::Quit => "quit".into(),
            MenuAction::QuitAndStopDaemon => "quit-stop-daemon".into(),
        }
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Some(match id {
            "daemon/start" => MenuAction::StartDaemon,
            "serving/start" => MenuAction::StartServing,
            "serving/stop" => MenuAction::StopServing,
            "ssd-cache" => MenuAction::ToggleSsdCache,
            "open-dashboard" => MenuAction::OpenDashboard,
            "open-models-folder" => MenuAction::OpenModelsFolder,
            "login-item" => MenuAction::ToggleLoginItem,
            "login-item-settings" => MenuAction::OpenLoginItemsSettings,
            "quit" => MenuAction::Quit,
            "quit-stop-daemon" => MenuAction::QuitAndStopDaemon,
            _ => match id.split_once('/')? {
                ("default", m) if !m.is_empty() => MenuAction::SetDefault(m.into()),
                ("pin", m) if !m.is_empty() => MenuAction::TogglePin(m.into()),
                _ => return None,
            },
        })
    }
}
