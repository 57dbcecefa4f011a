//! config.xml fuzzer: arbitrary (lossily UTF-8 decoded) text through `Config::parse`, with an
//! environment where every variable whose name starts with "A" is "1" and all others are unset.
//! Must never panic; the error's `Display` and `Debug` must not panic either.
#![no_main]

use apiary::config::Config;
use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    name.starts_with('A').then(|| "1".to_owned())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.xml", &env) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(error) => {
            let _ = format!("{error} {error:?}");
        }
    }
});
