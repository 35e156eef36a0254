//! The dashboard's TypeScript types (`ui/src/api-types.ts`) are generated from this crate's
//! types, so that the schema is written once. This test fails when the checked-in file is not
//! what the types generate (scripts/test.sh runs it as its own step); to rewrite the file
//! after changing the types: `WUWEI_WRITE_TS=1 cargo test -p wuwei-api typescript`.

use std::path::PathBuf;

use ts_rs::{Config, TS};

use crate::types::*;

const HEADER: &str = "\
// The admin API's types (docs/ADMIN_API.md), generated from api/src/types.rs: do not edit.
// After changing the Rust types: WUWEI_WRITE_TS=1 cargo test -p wuwei-api typescript
";

/// Every type the dashboard reads, in the order the file declares them.
fn declarations() -> String {
    // JavaScript numbers hold integers up to 2^53 exactly: byte counts and times fit.
    let cfg = Config::new().with_large_int("number");
    let decls = [
        Status::decl(&cfg),
        DeviceStatus::decl(&cfg),
        Memory::decl(&cfg),
        SystemMemory::decl(&cfg),
        MlxMemory::decl(&cfg),
        LoadedStatus::decl(&cfg),
        PrefixCache::decl(&cfg),
        SsdCache::decl(&cfg),
        RamCache::decl(&cfg),
        CacheState::decl(&cfg),
        ModelList::decl(&cfg),
        ModelStatus::decl(&cfg),
        SamplingDefaults::decl(&cfg),
        ModelState::decl(&cfg),
        ModelKind::decl(&cfg),
        Settings::decl(&cfg),
        ModelAnswer::decl(&cfg),
        DefaultAnswer::decl(&cfg),
        ChangedAnswer::decl(&cfg),
        ServingAnswer::decl(&cfg),
        ShutdownAnswer::decl(&cfg),
        Event::decl(&cfg),
        EventKind::decl(&cfg),
        EvictReason::decl(&cfg),
    ];
    let mut out = String::from(HEADER);
    for decl in decls {
        out.push('\n');
        out.push_str("export ");
        out.push_str(&decl);
        out.push('\n');
    }
    out
}

#[test]
fn typescript_types_are_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ui/src/api-types.ts");
    let generated = declarations();
    if std::env::var_os("WUWEI_WRITE_TS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is not what api/src/types.rs generates; run \
         `WUWEI_WRITE_TS=1 cargo test -p wuwei-api typescript` and commit it",
        path.display()
    );
}
