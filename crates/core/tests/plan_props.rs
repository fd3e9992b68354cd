//! Property tests of the loop plan (`docs/algorithm.md`, "The plan").

use loopback_core::plan::{plan, start_size};
use loopback_core::settings::{Choice, Curve, Settings, Size, TargetMode};
use proptest::prelude::*;

fn any_curve() -> impl Strategy<Value = Curve> {
    (0..Curve::ALL.len()).prop_map(|i| Curve::ALL[i])
}

fn any_settings() -> impl Strategy<Value = Settings> {
    (
        1u32..=32,
        any_curve(),
        (90u32..=110).prop_map(|v| f64::from(v) / 100.0),
        (5u32..=20).prop_map(|v| f64::from(v) / 10.0),
        prop_oneof![Just(TargetMode::MaxSize), Just(TargetMode::Scale)],
        (8u32..=64).prop_map(|v| v * 64),
        (8u32..=64).prop_map(|v| v * 64),
        (5u32..=40).prop_map(|v| f64::from(v) / 10.0),
        (0u32..=100).prop_map(|v| f64::from(v) / 100.0),
    )
        .prop_map(
            |(loops, curve, change, a, mode, mw, mh, scale, denoise)| Settings {
                loops,
                curve,
                denoise_change: change,
                adaptive_factor: a,
                target_mode: mode,
                max_width: mw,
                max_height: mh,
                scale,
                denoise,
                ..Settings::default()
            },
        )
}

fn any_start() -> impl Strategy<Value = Size> {
    (8u32..=512, 8u32..=512).prop_map(|(w, h)| Size::new(w * 8, h * 8))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn plan_invariants(s in any_settings(), start in any_start(), seed in any::<u32>(),
                       means in proptest::collection::vec(0.0f64..=255.0, 0..40)) {
        // Plans whose final size would exceed the largest side are refused, not produced.
        let Ok(p) = plan(&s, start, seed, &means) else {
            let scaled = (f64::from(start.width.max(start.height)) * s.scale).floor();
            prop_assert!(s.target_mode == TargetMode::Scale && scaled > 4096.0);
            return Ok(());
        };
        prop_assert_eq!(p.loops.len(), s.loops as usize);
        let last = p.loops.last().unwrap();
        prop_assert_eq!(last.size(), p.final_size);
        prop_assert!(p.final_size.width <= s.max_width || s.target_mode == TargetMode::Scale);
        prop_assert!(p.final_size.height <= s.max_height || s.target_mode == TargetMode::Scale);
        let growing = start.width <= p.final_size.width && start.height <= p.final_size.height;
        let bound = if growing {
            p.final_size
        } else {
            Size::new(start.width.max(p.final_size.width), start.height.max(p.final_size.height))
        };
        for (i, l) in p.loops.iter().enumerate() {
            prop_assert_eq!(l.index as usize, i + 1);
            prop_assert!(l.width % 8 == 0 && l.height % 8 == 0 && l.width >= 8 && l.height >= 8);
            prop_assert!(l.width <= bound.width && l.height <= bound.height, "{:?} > {:?}", l, bound);
            prop_assert_eq!(l.seed, seed.wrapping_add(i as u32));
            prop_assert!(l.steps <= s.steps);
            if i > 0 {
                prop_assert!((0.1..=1.0).contains(&l.denoise), "denoise {}", l.denoise);
            }
        }
        // Every curve of the spec is monotone, and so is the adaptive one.
        for pair in p.loops.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if growing {
                prop_assert!(b.width >= a.width && b.height >= a.height, "{:?} then {:?}", a, b);
            } else {
                prop_assert!(b.width <= a.width && b.height <= a.height, "{:?} then {:?}", a, b);
            }
        }
    }

    #[test]
    fn start_size_is_rounded_down(w in 64u32..=4096, h in 64u32..=4096) {
        let s = start_size(&Settings::default(), Some(Size::new(w, h))).unwrap();
        prop_assert_eq!(s, Size::new(w / 8 * 8, h / 8 * 8));
    }
}
