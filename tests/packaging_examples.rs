//! Every example configuration shipped in `packaging/examples/` parses and validates, with the
//! same loaders the agent, the relay and `ponte webhook` use. Checks that at least one file of each kind was found,
//! so a renamed folder cannot make this test pass by parsing nothing.

use std::path::Path;

use ponte::config::agent::{AgentConfig, AgentOverrides};
use ponte::config::relay::RelayConfig;

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples");
    let mut agents = 0;
    let mut relays = 0;
    let mut hooks = 0;
    for entry in std::fs::read_dir(&dir).expect("packaging/examples exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        if name.starts_with("hooks") {
            let (loaded, warnings) = ponte::hooks::load_file(&path, false).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !loaded.is_empty() && warnings.is_empty(),
                "{}: {warnings:?}",
                path.display()
            );
            hooks += 1;
        } else if name.starts_with("relay") {
            RelayConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            relays += 1;
        } else {
            AgentConfig::load(Some(&path), AgentOverrides::default()).unwrap_or_else(|e| panic!("{e}"));
            agents += 1;
        }
    }
    assert!(agents >= 1, "no agent example found in {}", dir.display());
    assert!(relays >= 1, "no relay example found in {}", dir.display());
    assert!(hooks >= 1, "no hooks example found in {}", dir.display());
}
