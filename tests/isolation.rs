//! One bad item fails only itself. Three requests are sent side by side so that their four
//! images share one batch; the encoder fails on one of them (the `fault-injection` hook hands
//! it NaN pixels, so its output is not a usable embedding, as with a real bad input). The two
//! other requests get 200 with the embeddings their images get alone, and the request with the
//! bad image gets an error naming that image's index in its own request.

mod common;

use std::io::Cursor;

use common::{b64, cosine, embeddings, photo, TestServer};
use serde_json::{json, Value};

/// A PNG of one flat colour: the images the fault hook fails on.
fn flat_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(256, 256, image::Rgb([120, 130, 140]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encodes");
    out.into_inner()
}

async fn embed_images(server: &TestServer, images: &[Vec<u8>]) -> (u16, Value) {
    let images: Vec<String> = images.iter().map(|i| b64(i)).collect();
    let r = reqwest::Client::new()
        .post(server.url("/v1/embed/image"))
        .json(&json!({ "images": images }))
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.json().await.expect("JSON"))
}

/// The image tower's batch count and items so far, from `/metrics`.
async fn image_batches(server: &TestServer) -> (f64, f64) {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sample = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        sample("clipserve_batch_size_count{tower=\"image\"}"),
        sample("clipserve_batch_size_sum{tower=\"image\"}"),
    )
}

fn assert_same_embedding(got: &[f32], alone: &[f32], what: &str) {
    let c = cosine(got, alone);
    assert!(c >= 0.99999, "{what}: cosine {c} to its embedding alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_item_that_fails_in_the_encoder_fails_only_its_own_request_and_the_batch_is_answered() {
    let server = TestServer::start(|s| {
        s.batching.image_workers = 1;
        s.batching.max_image_batch = 8;
        // The worker holds its first image long enough for the other requests to join it.
        s.batching.linger_ms = 1_500;
        s.batching.image_linger_while_decoding = false;
    })
    .await;
    let service = server.state.service().expect("loaded").clone();
    let (a, b, c) = (
        photo("pillow_hopper.jpg"),
        photo("skimage_chelsea.png"),
        photo("skimage_rocket.jpg"),
    );
    let flat = flat_png();

    // Each photo alone, before any fault: the reference.
    let mut alone = Vec::new();
    for img in [&a, &b, &c] {
        let (status, body) = embed_images(&server, std::slice::from_ref(img)).await;
        assert_eq!(status, 200, "{body}");
        alone.push(embeddings(&body).swap_remove(0));
    }

    service.fail_uniform_images(true);
    // The hook works: the flat image alone fails, with its index.
    let (status, body) = embed_images(&server, std::slice::from_ref(&flat)).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["index"], 0, "{body}");

    let (batches_before, items_before) = image_batches(&server).await;
    let with_bad = [b.clone(), flat.clone()];
    let (first, second, third) = tokio::join!(
        embed_images(&server, std::slice::from_ref(&a)),
        embed_images(&server, &with_bad),
        embed_images(&server, std::slice::from_ref(&c)),
    );
    let (batches_after, items_after) = image_batches(&server).await;
    assert_eq!(
        (batches_after - batches_before, items_after - items_before),
        (1.0, 4.0),
        "the three requests' four images ran as one batch"
    );

    // The requests beside the bad item: 200, and the embeddings their images get alone.
    assert_eq!(first.0, 200, "{}", first.1);
    assert_same_embedding(&embeddings(&first.1)[0], &alone[0], "request 1's image");
    assert_eq!(third.0, 200, "{}", third.1);
    assert_same_embedding(&embeddings(&third.1)[0], &alone[2], "request 3's image");
    // The request with the bad item: an error naming the item by its index in that request,
    // saying nothing of the cause.
    let (status, body) = second;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "internal_error", "{body}");
    assert_eq!(body["error"]["index"], 1, "{body}");

    // The tower is still ready and serves the same image again.
    service.fail_uniform_images(false);
    let ready = reqwest::get(server.url("/ready")).await.expect("ready");
    assert_eq!(ready.status(), 200);
    let (status, body) = embed_images(&server, std::slice::from_ref(&b)).await;
    assert_eq!(status, 200, "{body}");
    assert_same_embedding(
        &embeddings(&body)[0],
        &alone[1],
        "request 2's good image, later",
    );
}
