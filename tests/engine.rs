//! The model engine against the PyTorch OpenCLIP reference, on the committed tiny fixture
//! model (same architecture as the real one, small widths, random weights): embeddings of
//! photos and texts in many languages, batch invariance, padding invariance, and immich's
//! static export of the same weights.

mod common;

use clipserve::engine::{Buckets, Engine, EngineSettings, Precision};
use common::{cosine, fixture, parity};

fn load(model: &str, settings: &EngineSettings) -> Engine {
    Engine::load(&fixture(model), settings).unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn bucketed() -> EngineSettings {
    EngineSettings {
        image_buckets: Buckets {
            batch: vec![1, 2, 4],
            seq: vec![],
        },
        text_buckets: Buckets {
            batch: vec![1, 2, 4],
            seq: vec![8, 16, 77],
        },
        // f32 as exported: the parity tolerances below are f32's (tests/precision.rs checks
        // the default, `auto`).
        ..f32()
    }
}

fn f32() -> EngineSettings {
    EngineSettings {
        image_precision: Precision::F32,
        text_precision: Precision::F32,
        ..EngineSettings::default()
    }
}

#[test]
fn embeddings_match_pytorch_for_texts_and_images() {
    let reference = parity::load_reference(&fixture("reference/tiny"));
    let languages = reference.texts.len();
    assert!(languages >= 10, "the reference has {languages} texts");
    for settings in [f32(), bucketed()] {
        let engine = load("models/tiny", &settings);
        // The image tower computes its last block for the class token alone (the one row it
        // pools): the parity below holds for that narrowed graph.
        assert_eq!(engine.image.graph().narrowed(), 1);
        assert_eq!(engine.text.graph().narrowed(), 0);
        assert_matches_pytorch(&engine, &reference);
    }
}

/// The parity tolerances against PyTorch (f32: texts >= 0.99999, images >= 0.9999), over at
/// least 20 photos.
fn assert_matches_pytorch(engine: &Engine, reference: &parity::Reference) {
    assert_within(engine, reference, 0.99999, 0.9999);
}

/// Texts and images at or above the given cosines to PyTorch, over at least 20 photos.
fn assert_within(engine: &Engine, reference: &parity::Reference, texts: f64, images: f64) {
    let report = parity::run(engine, reference, &fixture("photos"));
    report.print();
    assert!(
        report.min_text_cosine() >= texts,
        "texts: {}",
        report.min_text_cosine()
    );
    assert!(
        report.min_image_cosine() >= images,
        "images: {}",
        report.min_image_cosine()
    );
    assert!(
        report.images.len() >= 20,
        "only {} photos compared",
        report.images.len()
    );
}

/// `f32` for both towers: where the CPU has AVX-512, every product by a weight matrix and the
/// attention's products of two activations run in the f32 tiles of our own, with the same folds
/// as in bf16 but the bf16 handoffs; the parity of f32 is checked above.
#[test]
fn f32_products_by_weights_are_our_own_where_the_cpu_has_avx512() {
    let engine = load("models/tiny", &f32());
    let (image, text) = (
        engine.image.graph().rewritten(),
        engine.text.graph().rewritten(),
    );
    if !clipserve::engine::ops::f32_supported() {
        eprintln!("no AVX-512 on this CPU: the towers are tract's");
        assert_eq!((image.by_weights, text.by_weights), (0, 0));
        return;
    }
    let blocks = 2;
    assert_eq!(image.by_weights, 4 * blocks + 2);
    assert_eq!(text.by_weights, 6 * blocks + 2);
    assert_eq!(
        (image.of_activations, text.of_activations),
        (2 * blocks, 2 * blocks)
    );
    assert_eq!(image.biases, 2 * blocks);
    assert_eq!((image.gelus, text.gelus), (blocks, blocks + 1));
    assert_eq!((image.handoffs, text.handoffs), (0, 0));
    assert_eq!((image.norms, text.norms), (2 * blocks, 0));
    assert_eq!((image.layer_norms, text.layer_norms), (2, 2 * blocks + 1));
    assert_eq!((image.softmaxes, text.softmaxes), (blocks, blocks));
    assert_eq!((image.sums, text.sums), (0, 0));
}

/// `bf16` for both towers: where the CPU has AVX512-BF16, every product by a weight matrix runs
/// in bf16, and the embeddings must still meet the default mode's tolerances against PyTorch's
/// f32 ones (images 0.9995, texts 0.9999; the image tower also meets f32's 0.9999); elsewhere
/// the towers stay f32.
#[test]
fn bf16_products_stay_within_the_parity_tolerance() {
    let reference = parity::load_reference(&fixture("reference/tiny"));
    let settings = EngineSettings {
        image_precision: Precision::Bf16,
        text_precision: Precision::Bf16,
        ..bucketed()
    };
    let engine = load("models/tiny", &settings);
    let (image, text) = (engine.image.graph(), engine.text.graph());
    if clipserve::engine::ops::bf16_supported() {
        // Image, per block: the attention's input and output projections and the MLP's two
        // layers; plus the patch embedding and the final projection. Text, per block: the
        // query, key, value and output projections and the MLP's two layers; plus the
        // projection head's two layers.
        let blocks = 2;
        assert_eq!(image.rewritten().by_weights, 4 * blocks + 2);
        assert_eq!(text.rewritten().by_weights, 6 * blocks + 2);
        // Both towers, per block: the attention's scores and their weighting of the values.
        assert_eq!(image.rewritten().of_activations, 2 * blocks);
        assert_eq!(text.rewritten().of_activations, 2 * blocks);
        // The image MLP's two biases per block are added inside their products. (The other
        // layers of the random-weight fixture have zero biases, whose adds tract removes.)
        assert_eq!(image.rewritten().biases, 2 * blocks);
        // The GELU after each block's first MLP layer is applied inside that product; in the
        // text tower the projection head's too (its MLP: layer, GELU, layer).
        assert_eq!(image.rewritten().gelus, blocks);
        assert_eq!(text.rewritten().gelus, blocks + 1);
        // Each of those products hands its output to the MLP's second layer as bf16 pairs.
        assert_eq!(image.rewritten().handoffs, blocks);
        assert_eq!(text.rewritten().handoffs, blocks + 1);
        // Each image block's two layer norms (pre-norm: only the attention's input projection
        // and the MLP's first layer read them) are applied by those products. The text tower
        // normalizes after its residual adds, which the next block reads too: none.
        assert_eq!(image.rewritten().norms, 2 * blocks);
        assert_eq!(text.rewritten().norms, 0);
        // Each block's attention softmax runs as a RowSoftmax, and the other layer norms each
        // as one RowLayerNorm: the image tower's before and after the blocks, the text tower's
        // two per block and the one after its embeddings. No other sum over a last axis is
        // left.
        assert_eq!(image.rewritten().softmaxes, blocks);
        assert_eq!(text.rewritten().softmaxes, blocks);
        assert_eq!(image.rewritten().layer_norms, 2);
        assert_eq!(text.rewritten().layer_norms, 2 * blocks + 1);
        assert_eq!((image.rewritten().sums, text.rewritten().sums), (0, 0));
        // The bf16 weights are counted once, at half the f32 size of what they replace.
        let f32_engine = load("models/tiny", &bucketed());
        assert!(image.weight_bytes() < f32_engine.image.graph().weight_bytes());
        assert!(text.weight_bytes() < f32_engine.text.graph().weight_bytes());
    } else {
        eprintln!("no AVX512-BF16 on this CPU: the towers stay f32");
        assert_eq!(
            (image.rewritten().by_weights, text.rewritten().by_weights),
            (0, 0)
        );
        assert_eq!(image.rewritten().of_activations, 0);
        assert_eq!(text.rewritten().of_activations, 0);
    }
    assert_within(&engine, &reference, 0.9999, 0.9999);
}

#[test]
fn the_tokenizer_gives_the_reference_ids_for_the_reference_texts() {
    let reference = parity::load_reference(&fixture("reference/tiny"));
    let engine = load("models/tiny", &EngineSettings::default());
    let report = parity::run(&engine, &reference, &fixture("photos"));
    // ftfy's mojibake repair has no Rust twin (see preprocess::clean): those texts may differ.
    let differing: Vec<&str> = report
        .texts
        .iter()
        .filter(|(_, _, same)| !same)
        .map(|(t, _, _)| t.as_str())
        .collect();
    assert!(
        differing
            .iter()
            .all(|t| t.contains('Ã') || t.contains("â€")),
        "ids differ for: {differing:?}"
    );
}

#[test]
fn a_batch_gives_the_same_embeddings_as_each_item_alone() {
    for settings in [EngineSettings::default(), bucketed()] {
        let engine = load("models/tiny", &settings);
        // Buckets that include 1 cover every image batch without a symbolic plan: the batcher
        // then cuts image batches to these sizes.
        let sizes = if settings.image_buckets.batch.is_empty() {
            vec![]
        } else {
            vec![1, 2, 4]
        };
        assert_eq!(engine.image.graph().batch_sizes(), sizes);
        let texts = [
            "a photo of a cat",
            "猫",
            "",
            "una foto de un gato muy grande y bonito",
        ];
        let ids: Vec<_> = texts
            .iter()
            .map(|t| engine.tokenizer.encode(t).unwrap())
            .collect();
        let views: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
        let batch = engine.text.embed(&views).unwrap();
        for (i, v) in views.iter().enumerate() {
            let alone = engine.text.embed(&[v]).unwrap();
            let c = cosine(alone[0].as_slice(), batch[i].as_slice());
            assert!(c >= 0.99999, "text {i}: {c}");
        }
        let (h, w) = engine.folder.preprocess.size();
        let n = 3 * h as usize * w as usize;
        let images: Vec<Vec<f32>> = (0..5)
            .map(|k| {
                (0..n)
                    .map(|i| ((i * (k + 3)) % 97) as f32 / 50.0 - 1.0)
                    .collect()
            })
            .collect();
        let views: Vec<&[f32]> = images.iter().map(|v| v.as_slice()).collect();
        let batch = engine.image.embed(&views).unwrap();
        for (i, v) in views.iter().enumerate() {
            let alone = engine.image.embed(&[v]).unwrap();
            let c = cosine(alone[0].as_slice(), batch[i].as_slice());
            assert!(c >= 0.99999, "image {i}: {c}");
        }
    }
}

#[test]
fn a_text_padded_to_77_embeds_as_at_its_own_length() {
    // Only the 77-token bucket: every text is padded to 77.
    let padded = load(
        "models/tiny",
        &EngineSettings {
            text_buckets: Buckets {
                batch: vec![1],
                seq: vec![77],
            },
            ..EngineSettings::default()
        },
    );
    // No buckets: the symbolic plan runs each text at its own length.
    let exact = load("models/tiny", &EngineSettings::default());
    for text in ["a photo of a cat", "", "фотография кошки на диване"] {
        let ids = exact.tokenizer.encode(text).unwrap();
        let a = exact.text.embed(&[ids.as_slice()]).unwrap();
        let b = padded.text.embed(&[ids.as_slice()]).unwrap();
        let c = cosine(a[0].as_slice(), b[0].as_slice());
        assert!(c >= 0.99999, "{text:?}: {c}");
    }
}

/// A batch mixing texts of very different lengths, which the encoder cuts into runs of similar
/// length (a run stops before a text under half its longest): every text still gets the
/// embedding it has alone, in the order it was given. The cut itself is not observed here,
/// only that it keeps each text's result and place.
#[test]
fn texts_of_mixed_lengths_in_one_batch_embed_as_alone() {
    let engine = load("models/tiny", &f32());
    let long = "a long description of a photograph taken at dusk, with a cat asleep on a red \
                sofa beside an open window, curtains moving, a cup of coffee on the table, \
                books in a pile on the floor and a lamp lit in the corner of the room";
    let texts = [
        "a cat",
        long,
        "кошка",
        "a photo of a dog on a beach",
        long,
        "猫",
    ];
    let ids: Vec<_> = texts
        .iter()
        .map(|t| engine.tokenizer.encode(t).unwrap())
        .collect();
    assert!(ids[1].len() > 4 * ids[0].len(), "{} tokens", ids[1].len());
    let views: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
    let batch = engine.text.embed(&views).unwrap();
    for (i, v) in views.iter().enumerate() {
        let alone = engine.text.embed(&[v]).unwrap();
        let c = cosine(alone[0].as_slice(), batch[i].as_slice());
        assert!(c >= 0.99999, "text {i} ({:?}): {c}", texts[i]);
    }
}

#[test]
fn the_static_immich_shaped_export_gives_the_same_embeddings() {
    let dynamic = load("models/tiny", &f32());
    let fixed = load("models/tiny-static", &bucketed());
    assert_eq!(fixed.text.graph().plan_shapes(), vec![(1, 77)]);
    assert_eq!(fixed.image.graph().plan_shapes(), vec![(1, 0)]);
    // A fixed batch axis: every image run is of batch 1, and the batcher cuts batches to it.
    assert_eq!(fixed.image.graph().batch_sizes(), vec![1]);
    assert_eq!(dynamic.image.graph().batch_sizes(), Vec::<usize>::new());
    let texts = ["a photo of a cat", "写真", ""];
    let ids: Vec<_> = texts
        .iter()
        .map(|t| dynamic.tokenizer.encode(t).unwrap())
        .collect();
    let views: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
    let a = dynamic.text.embed(&views).unwrap();
    let b = fixed.text.embed(&views).unwrap();
    for i in 0..texts.len() {
        let c = cosine(a[i].as_slice(), b[i].as_slice());
        assert!(c >= 0.99999, "text {i}: {c}");
    }
    let reference = parity::load_reference(&fixture("reference/tiny"));
    let report = parity::run(&fixed, &reference, &fixture("photos"));
    assert!(
        report.min_image_cosine() >= 0.9999,
        "{}",
        report.min_image_cosine()
    );
    assert!(
        report.min_text_cosine() >= 0.99999,
        "{}",
        report.min_text_cosine()
    );
}

#[test]
fn a_folder_that_breaks_the_contract_names_the_file_and_field() {
    let dir = std::env::temp_dir().join(format!("clipserve-bad-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("visual")).unwrap();
    std::fs::create_dir_all(dir.join("textual")).unwrap();
    let err = Engine::load(&dir, &EngineSettings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");

    std::fs::write(
        dir.join("config.json"),
        r#"{"embed_dim": "wide", "vision_cfg": {}, "text_cfg": {}}"#,
    )
    .unwrap();
    let err = Engine::load(&dir, &EngineSettings::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("embed_dim"),
        "{err}"
    );

    std::fs::write(
        dir.join("config.json"),
        r#"{"embed_dim": 512, "vision_cfg": {}, "text_cfg": {}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("visual/preprocess_cfg.json"),
        r#"{"size": 224, "mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#,
    )
    .unwrap();
    let err = Engine::load(&dir, &EngineSettings::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("preprocess_cfg.json") && err.contains("mean"),
        "{err}"
    );

    let tiny = fixture("models/tiny");
    std::fs::copy(
        tiny.join("visual/preprocess_cfg.json"),
        dir.join("visual/preprocess_cfg.json"),
    )
    .unwrap();
    let err = Engine::load(&dir, &EngineSettings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("visual/model.onnx"), "{err}");

    std::fs::write(dir.join("visual/model.onnx"), b"not a graph").unwrap();
    std::fs::copy(
        tiny.join("textual/model.onnx"),
        dir.join("textual/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        tiny.join("textual/tokenizer.json"),
        dir.join("textual/tokenizer.json"),
    )
    .unwrap();
    let err = Engine::load(&dir, &EngineSettings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("visual/model.onnx"), "{err}");

    // The text graph where the image graph should be: input 0 does not fit.
    std::fs::copy(
        tiny.join("textual/model.onnx"),
        dir.join("visual/model.onnx"),
    )
    .unwrap();
    let err = Engine::load(&dir, &EngineSettings::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("visual/model.onnx") && err.contains("input 0"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
