//! Config files: arbitrary TOML text through the config core (defaults, the file's layer,
//! validation) for each service. The first byte picks the service.
#![no_main]

use elk_assigner::AssignerConfig;
use elk_election::ElectionConfig;
use elk_fuzz::select;
use elk_runtime::{ServiceConfig, load_config_toml};
use elk_scaler::ScalerConfig;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fn load<T: ServiceConfig>(text: &str) {
    let no_flags: BTreeMap<String, String> = BTreeMap::new();
    let _ = load_config_toml::<T>(text, Vec::new(), no_flags);
}

fuzz_target!(|data: &[u8]| {
    let Some((service, bytes)) = select(data, 3) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match service {
        0 => load::<ElectionConfig>(text),
        1 => load::<AssignerConfig>(text),
        _ => load::<ScalerConfig>(text),
    }
});
