// Settings read from the environment (G4_PDL, G4_DECODE_FUSED, ...): one integer each, checked, so
// that a misspelt value is an error naming the variable rather than a silent default.
#pragma once

namespace g4 {

// `fallback` when `name` is unset or empty, else its value, which must be a decimal integer in
// [lo, hi]. `unset` says in the error what the fallback means ("the measured default").
int env_int(const char* name, int fallback, int lo, int hi, const char* unset);

}  // namespace g4
