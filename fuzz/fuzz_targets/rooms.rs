//! The room state machine under arbitrary operation sequences (see server/src/rooms/exercise.rs):
//! indexes stay consistent, no signal is reordered or duplicated, nothing is left behind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = server::rooms::exercise::run(data) {
        panic!("{broken}");
    }
});
