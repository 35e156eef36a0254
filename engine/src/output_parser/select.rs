//! Which parser reads a model's output.

use super::ToolParser;

/// The parser for a model: the configured one (`setting`), else the one its chat template
/// shows (templates render earlier calls, and describe the format, in the markup the model
/// writes), else its config.json `model_type` where that names one family, else Hermes (which
/// also reads Llama's JSON calls).
///
/// Qwen3-Coder and Qwen3 share `model_type` `qwen3_moe` but not their call format, so the
/// template decides first.
pub fn choose(
    setting: Option<ToolParser>,
    template: Option<&str>,
    model_type: Option<&str>,
) -> ToolParser {
    if let Some(parser) = setting {
        return parser;
    }
    if let Some(t) = template {
        if t.contains("<|channel|>") {
            return ToolParser::Harmony;
        }
        if t.contains("minimax:tool_call") {
            return ToolParser::MiniMax;
        }
        if t.contains("<arg_key>") {
            return ToolParser::Glm45;
        }
        if t.contains("<function=") && t.contains("<parameter=") {
            return ToolParser::Qwen3Coder;
        }
    }
    match model_type {
        Some("gpt_oss") => ToolParser::Harmony,
        Some("minimax" | "minimax_m2") => ToolParser::MiniMax,
        Some("glm4_moe") => ToolParser::Glm45,
        _ => ToolParser::Hermes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/templates")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_template_shows_the_format() {
        for (template, expected) in [
            ("gpt_oss.jinja", ToolParser::Harmony),
            ("minimax_m2.jinja", ToolParser::MiniMax),
            ("glm4.6.jinja", ToolParser::Glm45),
            ("qwen3_coder.jinja", ToolParser::Qwen3Coder),
            ("qwen3.jinja", ToolParser::Hermes),
            ("llama3.3.jinja", ToolParser::Hermes),
            ("smollm2.jinja", ToolParser::Hermes),
        ] {
            let t = fixture(template);
            assert_eq!(choose(None, Some(&t), None), expected, "{template}");
            // The template wins over a model_type shared by several formats.
            assert_eq!(
                choose(None, Some(&t), Some("qwen3_moe")),
                expected,
                "{template}"
            );
        }
    }

    #[test]
    fn model_type_decides_when_the_template_does_not() {
        let plain = "{% for m in messages %}{{ m.content }}{% endfor %}";
        for (model_type, expected) in [
            ("gpt_oss", ToolParser::Harmony),
            ("minimax", ToolParser::MiniMax),
            ("glm4_moe", ToolParser::Glm45),
            ("qwen3_moe", ToolParser::Hermes),
            ("llama", ToolParser::Hermes),
        ] {
            assert_eq!(choose(None, Some(plain), Some(model_type)), expected);
            assert_eq!(choose(None, None, Some(model_type)), expected);
        }
        assert_eq!(choose(None, None, None), ToolParser::Hermes);
    }

    #[test]
    fn the_setting_overrides_both() {
        let t = fixture("gpt_oss.jinja");
        for parser in [ToolParser::None, ToolParser::Llama3, ToolParser::Qwen3Coder] {
            assert_eq!(choose(Some(parser), Some(&t), Some("gpt_oss")), parser);
        }
    }
}
