//! The HTTP admin API's inputs: the JSON bodies of `POST /v1/jobs` and `POST /v1/retry` and the
//! query of `GET /v1/partitions` (parsed like axum's `Query` does), through the routes' own
//! decoders. The first byte picks the input. An accepted input must be a command the assigner
//! accepts on the wire too.
#![no_main]

use elk_assigner::http::{RequestInput, decode_request_input};
use elk_fuzz::select;
use elk_protocol::admin::AdminRequest;
use elk_protocol::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 3) else {
        return;
    };
    let query;
    let input = match kind {
        0 => RequestInput::CreateJobBody(bytes),
        1 => RequestInput::RetryBody(bytes),
        _ => {
            let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes) else {
                return;
            };
            query = pairs;
            RequestInput::PartitionsQuery(&query)
        }
    };
    if let Ok(command) = decode_request_input(input) {
        let request = AdminRequest::new(command);
        let sent = decode::<AdminRequest>(&encode(&request)).expect("a decoded command encodes");
        assert_eq!(sent, request);
    }
});
