//! Properties over hostile input: no bytes make `sniff` panic, and an answer never depends on how the
//! client cut its bytes into TLS records or TCP reads.

mod support;

use egress_sniff::{sniff, Sniff};
use proptest::prelude::*;
use support::*;

/// A real captured hello, picked by index.
fn capture() -> impl Strategy<Value = &'static Capture> {
    (0..CAPTURES.len()).prop_map(|i| &CAPTURES[i])
}

/// Record sizes for re-framing: mostly small, sometimes large.
fn record_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 1usize..600], 0..40)
}

/// Checks the answer for `bytes` and for every prefix of it: a prefix may only need more bytes until
/// the answer settles; a parsed hello or head settles exactly at its last byte and stays the same
/// after it, and a refusal stays a refusal.
fn prefixes_are_consistent(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut settled: Option<Sniff> = None;
    for end in 0..=bytes.len() {
        let answer = sniff(&bytes[..end]);
        match &settled {
            None => {
                match &answer {
                    Sniff::NeedMore => continue,
                    Sniff::Tls(info) => prop_assert_eq!(info.record_bytes, end),
                    Sniff::Http(info) => prop_assert_eq!(info.head_len, end),
                    Sniff::Opaque { .. } => {}
                }
                settled = Some(answer);
            }
            Some(Sniff::Opaque { .. }) => {
                prop_assert!(
                    matches!(answer, Sniff::Opaque { .. }),
                    "{:?} at {}",
                    answer,
                    end
                );
            }
            Some(first) => prop_assert_eq!(&answer, first, "answer changed at {}", end),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = sniff(&bytes);
    }

    #[test]
    fn random_bytes_after_a_tls_record_header_never_panic(
        header in prop::collection::vec(any::<u8>(), 4),
        rest in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = vec![0x16, 0x03];
        bytes.extend(&header[..3]);
        bytes.extend(&rest);
        prefixes_are_consistent(&bytes)?;
    }

    #[test]
    fn random_bytes_after_an_http_method_never_panic(
        method in prop::sample::select(vec!["GET ", "POST ", "CONNECT ", "OPTIONS ", "G"]),
        rest in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':')],
            0..512,
        ),
    ) {
        let mut bytes = method.as_bytes().to_vec();
        bytes.extend(&rest);
        prefixes_are_consistent(&bytes)?;
    }

    #[test]
    fn mutated_real_hellos_never_panic(
        capture in capture(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        sizes in record_sizes(),
    ) {
        let mut message = handshake_of(capture.bytes);
        for (at, value) in &edits {
            let i = at.index(message.len());
            message[i] = value.to_owned();
        }
        let _ = sniff(&reframe(&message, &sizes));
        let mut bytes = capture.bytes.to_vec();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = value.to_owned();
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = sniff(&bytes);
    }

    #[test]
    fn mutated_post_quantum_hello_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        sizes in record_sizes(),
    ) {
        let mut message = post_quantum_hello().message();
        for (at, value) in &edits {
            let i = at.index(message.len());
            message[i] = value.to_owned();
        }
        let _ = sniff(&reframe(&message, &sizes));
    }

    #[test]
    fn reframing_a_hello_into_any_records_gives_the_same_answer(
        capture in capture(),
        sizes in record_sizes(),
    ) {
        let whole = hello_info(capture.bytes);
        let stream = reframe(&handshake_of(capture.bytes), &sizes);
        let mut info = hello_info(&stream);
        prop_assert_eq!(info.record_bytes, stream.len());
        info.record_bytes = whole.record_bytes;
        prop_assert_eq!(&info, &whole);
        prefixes_are_consistent(&stream)?;
    }

    #[test]
    fn reframing_the_post_quantum_hello_gives_the_same_answer(sizes in record_sizes()) {
        let stream = reframe(&post_quantum_hello().message(), &sizes);
        let info = hello_info(&stream);
        prop_assert_eq!(info.server_name, hello_info(&post_quantum_hello().record()).server_name);
        prop_assert!(info.ech);
        prop_assert_eq!(info.record_bytes, stream.len());
    }

    #[test]
    fn request_heads_split_anywhere_give_the_same_answer(
        host in "[a-z]{1,10}(\\.[a-z0-9]{1,10}){0,3}",
        port in prop::option::of(1u16..),
        extra in prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..10),
    ) {
        let authority = match port {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let mut head = format!("GET /x HTTP/1.1\r\nHost: {authority}\r\n");
        for (name, value) in &extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        prefixes_are_consistent(head.as_bytes())?;
        let answer = sniff(head.as_bytes());
        let Sniff::Http(info) = answer else {
            return Err(TestCaseError::fail(format!("not parsed: {answer:?}")));
        };
        prop_assert_eq!(info.head_len, head.len());
    }
}
