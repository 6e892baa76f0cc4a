//! A property over random traffic: concurrent requests, each a random mixture of valid and
//! invalid items, always get answers about their own items, in order. A request whose items are
//! all valid gets each item's own embedding (as embedded alone) at its position; a request with
//! an invalid item gets the error for its first invalid item, naming that index. Never another
//! request's result.

mod common;

use common::{b64, cosine, fixture, photo, TestServer};
use futures::future::join_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

const MAX_CHARS: usize = 64;

/// One item of a request: an index into the valid pool, or one kind of invalid item.
#[derive(Debug, Clone, Copy)]
enum Item {
    Valid(usize),
    /// Text: longer than the limit (422 text_too_long). Image: bytes that are no image (422).
    Undecodable,
    /// Image only: not base64 at all (400, found before any image is decoded).
    BadBase64,
}

#[derive(Debug, Clone)]
struct Request {
    images: bool,
    items: Vec<Item>,
}

fn item(pool: usize, images: bool) -> impl Strategy<Value = Item> {
    let valid = (0..pool).prop_map(Item::Valid);
    if images {
        prop_oneof![8 => valid, 1 => Just(Item::Undecodable), 1 => Just(Item::BadBase64)].boxed()
    } else {
        prop_oneof![8 => valid, 1 => Just(Item::Undecodable)].boxed()
    }
}

fn request(texts: usize, images: usize) -> impl Strategy<Value = Request> {
    any::<bool>().prop_flat_map(move |is_image| {
        let pool = if is_image { images } else { texts };
        proptest::collection::vec(item(pool, is_image), 1..6).prop_map(move |items| Request {
            images: is_image,
            items,
        })
    })
}

struct Pools {
    texts: Vec<String>,
    images: Vec<String>,
    text_alone: Vec<Vec<f32>>,
    image_alone: Vec<Vec<f32>>,
}

fn embeddings(body: &Value) -> Vec<Vec<f32>> {
    body["embeddings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    e.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn post(
    client: &reqwest::Client,
    server: &TestServer,
    req: &Request,
    pools: &Pools,
) -> (u16, Value) {
    let (path, body) = if req.images {
        let images: Vec<String> = req
            .items
            .iter()
            .map(|i| match i {
                Item::Valid(k) => pools.images[*k].clone(),
                Item::Undecodable => b64(b"these bytes are not an image"),
                Item::BadBase64 => "data:image/png;base64,%%%".to_string(),
            })
            .collect();
        ("/v1/embed/image", json!({ "images": images }))
    } else {
        let texts: Vec<String> = req
            .items
            .iter()
            .map(|i| match i {
                Item::Valid(k) => pools.texts[*k].clone(),
                _ => "x".repeat(MAX_CHARS + 1),
            })
            .collect();
        ("/v1/embed/text", json!({ "texts": texts }))
    };
    let r = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The answer a request must get, checked against the one it got.
fn check(req: &Request, status: u16, body: &Value, pools: &Pools) -> Result<(), TestCaseError> {
    let first = |pred: fn(&Item) -> bool| req.items.iter().position(pred);
    let bad_b64 = first(|i| matches!(i, Item::BadBase64));
    let undecodable = first(|i| matches!(i, Item::Undecodable));
    if let Some(index) = bad_b64 {
        prop_assert_eq!(status, 400, "{:?}: {}", req, body);
        prop_assert_eq!(body["error"]["index"].as_u64(), Some(index as u64));
    } else if let Some(index) = undecodable {
        prop_assert_eq!(status, 422, "{:?}: {}", req, body);
        prop_assert_eq!(body["error"]["index"].as_u64(), Some(index as u64));
    } else {
        prop_assert_eq!(status, 200, "{:?}: {}", req, body);
        let got = embeddings(body);
        prop_assert_eq!(got.len(), req.items.len());
        for (pos, (item, e)) in req.items.iter().zip(&got).enumerate() {
            let Item::Valid(k) = item else { unreachable!() };
            let alone = if req.images {
                &pools.image_alone[*k]
            } else {
                &pools.text_alone[*k]
            };
            let c = cosine(e, alone);
            prop_assert!(
                c > 0.99999,
                "{:?} item {}: cosine {} with itself alone",
                req,
                pos,
                c
            );
        }
    }
    Ok(())
}

#[test]
fn concurrent_mixtures_of_valid_and_invalid_items_get_their_own_answers_in_order() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::start(|s| {
        s.limits.max_text_chars = MAX_CHARS;
        s.batching.linger_ms = 5;
    }));
    let client = reqwest::Client::new();
    let texts: Vec<String> = (0..10)
        .map(|i| {
            ["a cat", "un chien", "一只鸟", "рыба", ""][i % 5].to_string() + &" !".repeat(i / 5)
        })
        .collect();
    let mut images: Vec<String> = [
        "pillow_hopper.jpg",
        "skimage_chelsea.png",
        "skimage_rocket.jpg",
        "pillow_flower.jpg",
    ]
    .iter()
    .map(|p| b64(&photo(p)))
    .collect();
    for bad in ["one_pixel.png", "small.jpg", "rgb16.png"] {
        images.push(b64(&std::fs::read(fixture("bad").join(bad)).unwrap()));
    }
    let mut pools = Pools {
        texts,
        images,
        text_alone: Vec::new(),
        image_alone: Vec::new(),
    };
    rt.block_on(async {
        for t in pools.texts.clone() {
            let (s, b) = post(
                &client,
                &server,
                &Request {
                    images: false,
                    items: vec![Item::Valid(pools.text_alone.len())],
                },
                &pools,
            )
            .await;
            assert_eq!(s, 200, "{t:?}: {b}");
            pools.text_alone.push(embeddings(&b).remove(0));
        }
        for _ in 0..pools.images.len() {
            let req = Request {
                images: true,
                items: vec![Item::Valid(pools.image_alone.len())],
            };
            let (s, b) = post(&client, &server, &req, &pools).await;
            assert_eq!(s, 200, "{b}");
            pools.image_alone.push(embeddings(&b).remove(0));
        }
    });
    // Distinct items embed distinctly, so a swapped answer could not pass.
    for list in [&pools.text_alone, &pools.image_alone] {
        for i in 0..list.len() {
            for j in i + 1..list.len() {
                assert!(
                    cosine(&list[i], &list[j]) < 0.99999,
                    "items {i} and {j} embed alike"
                );
            }
        }
    }

    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(request(pools.texts.len(), pools.images.len()), 1..8);
    runner
        .run(&strategy, |requests| {
            rt.block_on(async {
                let answers =
                    join_all(requests.iter().map(|r| post(&client, &server, r, &pools))).await;
                for (req, (status, body)) in requests.iter().zip(&answers) {
                    check(req, *status, body, &pools)?;
                }
                Ok(())
            })
        })
        .unwrap();
}
