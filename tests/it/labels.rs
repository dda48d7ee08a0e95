//! ImageNet class names and the class lookup used by the CLI and the class picker.

use dcae::labels::{self, LabelError, NUM_CLASSES, UNCONDITIONAL};

#[test]
fn standard_index_order() {
    assert_eq!(labels::name(0), Some("tench"));
    assert_eq!(labels::name(1), Some("goldfish"));
    assert_eq!(labels::name(207), Some("golden retriever"));
    assert_eq!(labels::name(279), Some("Arctic fox"));
    assert_eq!(labels::name(333), Some("hamster"));
    assert_eq!(labels::name(999), Some("toilet tissue"));
    assert_eq!(labels::name(1000), None);
    assert_eq!(
        labels::synonyms(279).unwrap(),
        ["Arctic fox", "white fox", "Alopex lagopus"]
    );
    assert!((0..NUM_CLASSES as u32).all(|id| labels::name(id).is_some()));
}

#[test]
fn lookup_by_id() {
    assert_eq!(labels::lookup("0"), Ok(0));
    assert_eq!(labels::lookup(" 999 "), Ok(999));
    assert_eq!(labels::lookup("1000"), Ok(UNCONDITIONAL));
    assert_eq!(
        labels::lookup("1001"),
        Err(LabelError::OutOfRange { id: 1001 })
    );
    let huge = labels::lookup("99999999999999999999999").unwrap_err();
    assert!(matches!(huge, LabelError::OutOfRange { .. }));
    assert!(labels::lookup("1001")
        .unwrap_err()
        .to_string()
        .contains("0 to 999"));
}

#[test]
fn lookup_by_name_and_synonym() {
    assert_eq!(labels::lookup("golden retriever"), Ok(207));
    assert_eq!(labels::lookup("Golden_Retriever"), Ok(207));
    assert_eq!(labels::lookup("arctic fox"), Ok(279));
    assert_eq!(labels::lookup("Alopex lagopus"), Ok(279));
    assert_eq!(labels::lookup("toilet paper"), Ok(999));
    assert_eq!(labels::lookup("unconditional"), Ok(UNCONDITIONAL));
    assert_eq!(labels::lookup("NULL"), Ok(UNCONDITIONAL));
    assert_eq!(labels::lookup("  "), Err(LabelError::Empty));
}

#[test]
fn ambiguous_names_list_every_class() {
    let err = labels::lookup("crane").unwrap_err();
    match &err {
        LabelError::Ambiguous { candidates, .. } => {
            let ids: Vec<u32> = candidates.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, [134, 517]);
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("134 (crane)") && message.contains("517 (crane)"),
        "{message}"
    );
}

#[test]
fn unknown_names_suggest_close_matches() {
    let err = labels::lookup("golden retreiver").unwrap_err();
    match &err {
        LabelError::NotFound { suggestions, .. } => {
            assert_eq!(suggestions.first(), Some(&(207, "golden retriever")));
            assert!(suggestions.len() <= 8);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("did you mean: 207 (golden retriever)"),
        "{err}"
    );

    let err = labels::lookup("fox").unwrap_err();
    let LabelError::NotFound { suggestions, .. } = &err else {
        panic!("{err:?}")
    };
    let ids: Vec<u32> = suggestions.iter().map(|(id, _)| *id).collect();
    for fox in [277, 278, 279, 280] {
        assert!(ids.contains(&fox), "fox class {fox} missing from {ids:?}");
    }

    let err = labels::lookup("qqqqqqqqqqqqqqqqqq").unwrap_err();
    assert!(matches!(&err, LabelError::NotFound { suggestions, .. } if suggestions.is_empty()));
    assert!(err.to_string().contains("try another name"), "{err}");
}

#[test]
fn search_ranks_exact_then_prefix_then_substring_then_fuzzy() {
    // "hamster" is exact for 333.
    assert_eq!(
        labels::search("hamster", 3).first(),
        Some(&(333, "hamster"))
    );
    // A prefix beats a substring: "golden" starts "golden retriever"; "goldfish" starts with "gold".
    let results = labels::search("gold", 10);
    let ids: Vec<u32> = results.iter().map(|(id, _)| *id).collect();
    assert!(ids.starts_with(&[1]), "{results:?}");
    assert!(ids.contains(&207), "{results:?}");
    // Typos still find the class.
    assert_eq!(labels::search("hamstre", 5).first().map(|r| r.0), Some(333));
    // An id puts its class first.
    assert_eq!(labels::search("207", 1), [(207, "golden retriever")]);
    // The limit is respected and an empty query lists classes in order.
    assert_eq!(labels::search("dog", 4).len(), 4);
    assert_eq!(
        labels::search("", 3),
        [(0, "tench"), (1, "goldfish"), (2, "great white shark")]
    );
    // A synonym finds the class, shown by its display name.
    assert_eq!(labels::search("white fox", 1), [(279, "Arctic fox")]);
}
