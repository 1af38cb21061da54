//! Property tests (fuzzing with proptest) of the decoders that see hostile input: the stream
//! header and reply decoders, and the DNS-SD TXT record parser. Any byte string must decode to
//! a value or a typed error, never panic, and valid encodings must round-trip.

use std::collections::HashMap;

use ambassador::discovery::TxtRecord;
use ambassador::names::{InstanceTag, ServiceName};
use ambassador::transport::protocol::{FLAG_TAG, HeaderError, Reply, Request};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok((req, used)) = Request::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(req.encode(), bytes[..used].to_vec());
        }
    }

    #[test]
    fn reply_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok((_, used)) = Reply::decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn valid_requests_round_trip(name in "[a-z0-9][a-z0-9_-]{0,61}[a-z0-9]", flags in any::<u8>(), tag in proptest::option::of("[a-z0-9]{1,32}"), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let tag = tag.map(|t| InstanceTag::parse(&t).unwrap());
        // The tag flag says whether a tag follows: encode sets it from the tag.
        let flags = (flags & !FLAG_TAG) | if tag.is_some() { FLAG_TAG } else { 0 };
        let req = Request { service: ServiceName::parse(&name).unwrap(), flags, tag };
        let mut bytes = req.encode();
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        let (decoded, used) = Request::decode(&bytes).unwrap();
        prop_assert_eq!(decoded, req);
        prop_assert_eq!(used, len);
        // Every strict prefix is incomplete, never an error nor a wrong value.
        for cut in 0..len {
            prop_assert_eq!(Request::decode(&bytes[..cut]).unwrap_err(), HeaderError::Incomplete);
        }
    }

    #[test]
    fn txt_parser_never_panics(entries in proptest::collection::hash_map(
        prop_oneof![Just("v"), Just("svc"), Just("port"), Just("node"), Just("mesh"), Just("id"), Just("w"), Just("h"), Just("x")].prop_map(String::from),
        ".{0,80}",
        0..9,
    )) {
        let map: HashMap<String, String> = entries;
        if let Ok(rec) = TxtRecord::parse(|k| map.get(k).cloned()) {
            // Whatever parses re-encodes to something that parses to the same record.
            let props = rec.to_properties();
            prop_assert_eq!(TxtRecord::parse(|k| props.get(k).cloned()).unwrap(), rec);
        }
    }
}
