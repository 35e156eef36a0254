# Sourced (not run) by the scripts that run Wuwei on a Linux CPU: exports OPENBLAS_CORETYPE when
# OpenBLAS would otherwise fall back to its oldest x86-64 kernels.
#
# Debian 12's OpenBLAS (0.3.21) picks its kernels from the CPU's family/model numbers. On CPUs it
# does not know — the cloud Xeons these tests run on report a bare "Intel(R) Xeon(R) Processor" —
# it falls back to "Prescott" (SSE3), although the CPU has AVX2 and AVX-512. Measured on such a
# machine (SmolLM2, dequantized f32 weights, 372-token prompt): prefill 95 → 160 tok/s and decode
# ~10.5 → ~12.4 tok/s with SkylakeX's kernels. A CPU OpenBLAS recognises is left alone, and so is
# an OPENBLAS_CORETYPE the caller set. bench/report.py does the same for the benchmarks.
if [ "$(uname -s)" = Linux ] && [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  _core=$(python3 - <<'PY' 2>/dev/null || true
import ctypes
lib = ctypes.CDLL("libopenblas.so.0")
lib.openblas_get_corename.restype = ctypes.c_char_p
print(lib.openblas_get_corename().decode())
PY
)
  if [ "$(printf %s "$_core" | tr '[:upper:]' '[:lower:]')" = prescott ]; then
    _flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
    case "$_flags" in
      *" avx512f "*" avx512bw "* | *" avx512bw "*" avx512f "*) export OPENBLAS_CORETYPE=SkylakeX ;;
      *" avx2 "*) export OPENBLAS_CORETYPE=Haswell ;;
    esac
    [ -n "${OPENBLAS_CORETYPE:-}" ] && echo "OpenBLAS does not recognise this CPU; using its $OPENBLAS_CORETYPE kernels (OPENBLAS_CORETYPE)" >&2
  fi
  unset _core _flags
fi
