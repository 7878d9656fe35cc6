//! Plugin file names (`<protocol>-<semver>.wasm`) as the duchy's plugin registry parses them
//! from its plugin directory (`halo_signing::parse_component_file_name`). Invariant: a parsed
//! name re-formats to exactly the file name, with a non-empty protocol id.
#![no_main]

use halo_signing::{component_file_name, parse_component_file_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((protocol, version)) = parse_component_file_name(name) {
        assert!(!protocol.is_empty());
        assert_eq!(component_file_name(&protocol, &version), name);
    }
});
