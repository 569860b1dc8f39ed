use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::Serialize;

use super::*;

fn key<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    write_key_arg(&mut out, value).expect("keyable");
    out
}

fn key_str<T: Serialize + ?Sized>(value: &T) -> String {
    String::from_utf8(key(value)).expect("UTF-8")
}

#[test]
fn non_finite_floats_get_tokens_of_their_own() {
    let keys = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0].map(|f| key_str(&f));
    assert_eq!(keys, ["NaN", "Infinity", "-Infinity", "1.0"]);
    let keys = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5].map(|f| key_str(&f));
    assert_eq!(keys, ["NaN", "Infinity", "-Infinity", "0.5"]);
    assert_eq!(serde_json::to_string(&f64::NAN).unwrap(), "null", "the bug");
}

#[test]
fn a_some_that_would_read_as_none_is_marked() {
    let none: Option<Option<u8>> = None;
    assert_eq!(key_str(&none), "null");
    assert_eq!(key_str(&Some(None::<u8>)), "?null");
    assert_eq!(key_str(&Some(Some(None::<u8>))), "??null");
    assert_eq!(
        key_str(&Some(Some(Some(1u8)))),
        "1",
        "other options keep their bytes"
    );
    assert_eq!(key_str(&Some(())), "?null");
    assert_eq!(
        key_str(&vec![None, Some(None), Some(Some(2u8))]),
        "[null,?null,2]"
    );
}

#[test]
fn maps_are_written_in_the_natural_order_of_their_keys() {
    let numbers = HashMap::from([(10u32, 'a'), (9, 'b'), (100, 'c')]);
    assert_eq!(key_str(&numbers), r#"{"9":"b","10":"a","100":"c"}"#);
    let signed = HashMap::from([(-1i128, 0), (i128::MIN, 1), (5, 2)]);
    assert_eq!(
        key_str(&signed),
        format!(r#"{{"{}":1,"-1":0,"5":2}}"#, i128::MIN)
    );
    // Strings by their bytes, as `String`'s `Ord` (and so a `BTreeMap`) has them, not by their
    // escaped form: `"` sorts before `#` although `\"` sorts after it.
    let strings = HashMap::from([
        ("10".to_owned(), 1),
        ("9".to_owned(), 2),
        ("\"".to_owned(), 3),
        ("#".to_owned(), 4),
    ]);
    let sorted: BTreeMap<_, _> = strings.clone().into_iter().collect();
    assert_eq!(key(&strings), serde_json::to_vec(&sorted).unwrap());
    assert_eq!(key_str(&strings), r##"{"\"":3,"#":4,"10":1,"9":2}"##);

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord, Hash, Clone, Copy)]
    enum Shelf {
        Top,
        Middle,
        Bottom,
    }
    let shelves = HashMap::from([(Shelf::Bottom, 1), (Shelf::Top, 2), (Shelf::Middle, 3)]);
    let sorted: BTreeMap<_, _> = shelves.clone().into_iter().collect();
    assert_eq!(
        key(&shelves),
        serde_json::to_vec(&sorted).unwrap(),
        "declaration order"
    );
    let flags = HashMap::from([(true, 1), (false, 2)]);
    assert_eq!(key_str(&flags), r#"{"false":2,"true":1}"#);
}

#[test]
fn a_struct_with_a_flattened_field_keeps_its_field_order() {
    // serde writes it through `serialize_map` without a length, as it does no collection.
    #[derive(Serialize)]
    struct Inner {
        zulu: u8,
        alpha: u8,
    }
    #[derive(Serialize)]
    struct Outer {
        mike: u8,
        #[serde(flatten)]
        inner: Inner,
        bravo: u8,
    }
    let value = Outer {
        mike: 1,
        inner: Inner { zulu: 2, alpha: 3 },
        bravo: 4,
    };
    assert_eq!(
        key_str(&value),
        r#"{"mike":1,"zulu":2,"alpha":3,"bravo":4}"#
    );
    assert_eq!(key(&value), serde_json::to_vec(&value).unwrap());
}

#[test]
fn maps_with_keys_json_cannot_write_are_refused() {
    let map = HashMap::from([(vec![1u8], 1)]);
    let mut out = Vec::new();
    assert!(matches!(write_key_arg(&mut out, &map), Err(Error::Json(_))));
    assert!(matches!(to_vec_lossless(&map), Err(Error::Json(_))));
    assert!(to_vec_lossless(&HashMap::from([(f64::NAN.to_bits(), 1)])).is_ok());
}

#[test]
fn lossy_values_are_refused_with_where_and_why() {
    #[derive(Serialize)]
    struct Quote {
        prices: Vec<f64>,
        note: Option<Option<String>>,
    }
    let nan = Quote {
        prices: vec![1.0, f64::NAN],
        note: None,
    };
    assert_eq!(
        to_vec_lossless(&nan).unwrap_err().to_string(),
        "a non-finite float (NaN), which JSON writes as null, at .prices[1]"
    );
    let none_inside = Quote {
        prices: vec![],
        note: Some(None),
    };
    assert_eq!(
        to_vec_lossless(&none_inside).unwrap_err().to_string(),
        "Some(x) where x is written as null, which reads back as None, at .note"
    );
    let in_map = BTreeMap::from([("a", vec![0.0f32]), ("b\"", vec![f32::NEG_INFINITY])]);
    assert_eq!(
        to_vec_lossless(&in_map).unwrap_err().to_string(),
        r#"a non-finite float (-inf), which JSON writes as null, at ["b\""][0]"#
    );
    assert!(to_vec_lossless(&f64::INFINITY).is_err());
    assert_eq!(to_vec_lossless(&Some(Some(1u8))).unwrap(), b"1");
}

/// Values serde_json writes faithfully: no non-finite float, no `Some` of something written as
/// `null` (no variant writes `null`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Tree {
    I(i64),
    U(u64),
    Wide(i128),
    F(f64),
    G(f32),
    S(String),
    B(bool),
    C(char),
    List(Vec<Tree>),
    Tuple((u8, Box<Tree>)),
    Record(Record),
    Tagged(Tagged),
    ByName(BTreeMap<String, Tree>),
    ByNumber(BTreeMap<i32, Tree>),
    ByWide(BTreeMap<u128, Tree>),
    ByChar(BTreeMap<char, Tree>),
    ByShelf(BTreeMap<Shelf, Tree>),
}

#[derive(Debug, Clone, Serialize)]
struct Record {
    name: String,
    #[serde(rename = "odd \"name\"\n")]
    child: Option<Box<Tree>>,
    unit: (),
}

#[derive(Debug, Clone, Serialize)]
enum Tagged {
    Unit,
    Newtype(Box<Tree>),
    Pair(i8, Box<Tree>),
    Named { inner: Box<Tree> },
}

/// Declared out of alphabetical order: a `BTreeMap` orders it by declaration.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
enum Shelf {
    Zeta,
    Alpha,
    Mid,
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Tree::I),
        any::<u64>().prop_map(Tree::U),
        any::<i128>().prop_map(Tree::Wide),
        finite_f64().prop_map(Tree::F),
        any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Tree::G),
        any::<String>().prop_map(Tree::S),
        any::<bool>().prop_map(Tree::B),
        any::<char>().prop_map(Tree::C),
        Just(Tree::Tagged(Tagged::Unit)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        let shelf = prop_oneof![Just(Shelf::Zeta), Just(Shelf::Alpha), Just(Shelf::Mid)];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Tree::List),
            (any::<u8>(), inner.clone()).prop_map(|(a, t)| Tree::Tuple((a, Box::new(t)))),
            (any::<String>(), prop::option::of(inner.clone())).prop_map(|(name, child)| {
                Tree::Record(Record {
                    name,
                    child: child.map(Box::new),
                    unit: (),
                })
            }),
            inner
                .clone()
                .prop_map(|t| Tree::Tagged(Tagged::Newtype(Box::new(t)))),
            (any::<i8>(), inner.clone())
                .prop_map(|(a, t)| Tree::Tagged(Tagged::Pair(a, Box::new(t)))),
            inner
                .clone()
                .prop_map(|t| Tree::Tagged(Tagged::Named { inner: Box::new(t) })),
            prop::collection::btree_map(any::<String>(), inner.clone(), 0..4)
                .prop_map(Tree::ByName),
            prop::collection::btree_map(any::<i32>(), inner.clone(), 0..4).prop_map(Tree::ByNumber),
            prop::collection::btree_map(any::<u128>(), inner.clone(), 0..4).prop_map(Tree::ByWide),
            prop::collection::btree_map(any::<char>(), inner.clone(), 0..4).prop_map(Tree::ByChar),
            prop::collection::btree_map(shelf, inner, 0..3).prop_map(Tree::ByShelf),
        ]
    })
}

/// Values where serde_json is ambiguous, with a small domain so that equal pairs are frequent.
#[derive(Debug, Clone, Serialize)]
struct Hostile {
    f: f64,
    g: f32,
    twice: Option<Option<u8>>,
    thrice: Option<Option<Option<()>>>,
    by_name: HashMap<String, Option<Option<f64>>>,
    list: Vec<Option<Option<bool>>>,
}

fn same_f64(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn same_opt_f64(a: &Option<Option<f64>>, b: &Option<Option<f64>>) -> bool {
    match (a, b) {
        (Some(Some(a)), Some(Some(b))) => same_f64(*a, *b),
        (Some(None), Some(None)) | (None, None) => true,
        _ => false,
    }
}

/// Equality as a cache should see it: NaN is NaN, `-0.0` is not `0.0` (a getter may print it).
fn same(a: &Hostile, b: &Hostile) -> bool {
    same_f64(a.f, b.f)
        && same_f64(f64::from(a.g), f64::from(b.g))
        && a.twice == b.twice
        && a.thrice == b.thrice
        && a.list == b.list
        && a.by_name.len() == b.by_name.len()
        && a.by_name
            .iter()
            .all(|(k, v)| b.by_name.get(k).is_some_and(|w| same_opt_f64(v, w)))
}

fn small_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(1.5),
        Just(f64::MAX),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let g = prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(1.0f32)
    ];
    let twice = prop::option::of(prop::option::of(0u8..2));
    let thrice = prop::option::of(prop::option::of(prop::option::of(Just(()))));
    let by_name = prop::collection::hash_map(
        "[ab]{0,1}",
        prop::option::of(prop::option::of(small_f64())),
        0..3,
    );
    let list = prop::collection::vec(prop::option::of(prop::option::of(any::<bool>())), 0..2);
    (small_f64(), g, twice, thrice, by_name, list).prop_map(
        |(f, g, twice, thrice, by_name, list)| Hostile {
            f,
            g,
            twice,
            thrice,
            by_name,
            list,
        },
    )
}

/// The same entries, inserted in another order into a map with other hash keys.
fn reinserted<V: Clone>(map: &HashMap<String, V>) -> HashMap<String, V> {
    let mut entries: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    entries.reverse();
    entries.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn where_json_is_faithful_the_bytes_are_serde_jsons(value in tree()) {
        let json = serde_json::to_vec(&value).unwrap();
        prop_assert_eq!(&key(&value), &json);
        prop_assert_eq!(&to_vec_lossless(&value).unwrap(), &json);
    }

    #[test]
    fn distinct_values_get_distinct_keys(a in hostile(), b in hostile()) {
        let same_key = key(&a) == key(&b);
        prop_assert_eq!(same(&a, &b), same_key, "{:?} / {:?}", key_str(&a), key_str(&b));
        let again = Hostile { by_name: reinserted(&a.by_name), ..a.clone() };
        prop_assert_eq!(key(&a), key(&again), "a map's key does not depend on its iteration order");
    }

    #[test]
    fn a_hash_map_is_keyed_as_the_btree_map_of_its_entries(
        entries in prop::collection::hash_map(any::<String>(), any::<u32>(), 0..8),
        numbers in prop::collection::hash_map(any::<i64>(), any::<u8>(), 0..8),
    ) {
        let sorted: BTreeMap<_, _> = entries.iter().collect();
        prop_assert_eq!(key(&entries), serde_json::to_vec(&sorted).unwrap());
        prop_assert_eq!(key(&reinserted(&entries)), key(&entries));
        let sorted: BTreeMap<_, _> = numbers.iter().collect();
        prop_assert_eq!(key(&numbers), serde_json::to_vec(&sorted).unwrap());
    }
}
