//! Every example configuration shipped in `packaging/examples/` parses and validates, with the
//! same loaders the agent, the relay and `ponte webhook` use (an agent example only once its
//! placeholders are replaced: as shipped it must be refused with a message saying what to edit).
//! Checks that at least one file of each kind was found, so a renamed folder cannot make this test
//! pass by parsing nothing.

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
            let e = AgentConfig::load(Some(&path), AgentOverrides::default())
                .expect_err("the example as shipped is refused");
            assert!(e.to_string().contains("still the example"), "{e}");
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace(ponte::config::agent::EXAMPLE_TOKEN, "a-real-token")
                .replace(ponte::config::agent::EXAMPLE_RELAY_HOST, "relay.clinic.example");
            let edited = tempfile::tempdir().unwrap();
            let edited_path = edited.path().join(&name);
            std::fs::write(&edited_path, text).unwrap();
            AgentConfig::load(Some(&edited_path), AgentOverrides::default())
                .unwrap_or_else(|e| panic!("{e}"));
            agents += 1;
        }
    }
    assert!(agents >= 1, "no agent example found in {}", dir.display());
    assert!(relays >= 1, "no relay example found in {}", dir.display());
    assert!(hooks >= 1, "no hooks example found in {}", dir.display());
}
