// The language of a Tenant's tokenCost field.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::api {

// A token-cost expression over `input_tokens`, `output_tokens` and
// `total_tokens` with + - * / and parentheses, e.g.
// "input_tokens / 3 + output_tokens" (Envoy AI Gateway's shape). A negative
// or non-finite result counts as 0; division by 0 gives 0.
class CostExpression {
 public:
  CostExpression();  // input_tokens + output_tokens
  // Errors name the 1-based column: "column 15: expected a number, a
  // variable or '('".
  static Result<CostExpression> parse(std::string_view text);
  double evaluate(double input_tokens, double output_tokens) const;
  const std::string& text() const { return text_; }

  static constexpr size_t kStackDepth = 160;
  struct Op {
    enum Kind : uint8_t { kNumber, kInput, kOutput, kTotal, kAdd, kSub, kMul, kDiv, kNeg } kind;
    double number = 0;
  };

 private:
  std::string text_;
  std::vector<Op> program_;  // postfix
};

}  // namespace loadstar::api
