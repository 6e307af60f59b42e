//! Lossless compressed chunk encoding for one series' samples `(ts_ms, value)`.
//!
//! # Format (version 1)
//!
//! ```text
//! chunk  = VERSION:u8 count:uvarint [first_ts:svarint last_ts-first_ts:svarint stream]
//!          bracketed part iff count > 0; uvarint = LEB128, svarint = zigzag LEB128,
//!          the difference wraps
//! stream = binary range coder (LZMA style; adaptive 12-bit probabilities whose rate
//!          starts at ~1/(n+2) and settles at 1/32) carrying
//!          value(0), then ts(i) value(i) for i in 1..count;
//!          its always-zero first byte is omitted, its 4-byte flush ends the chunk
//! ts(i)  = int(ts - prediction) (prediction below), no trailing-zero contexts; for
//!          i = 1, whose residual is the whole interval, raw_int instead
//! value  = leave:bit (context: current representation)
//!          decimal, stay:   int(m - m_prev, trailing-zero contexts)
//!          decimal, leave:  to_float:bit, then float or rescale
//!          float,   stay:   float
//!          float,   leave:  rescale
//! rescale= k:4-bit tree, raw_int(m - round(prev * 10^k))   (value = m as f64 / 10^k)
//! float  = xor_is_zero:bit | lz:6-bit tree tz:6-bit tree bits-between:flat
//!          (xor = bits ^ prev_bits, Gorilla style; prev of value(0) is +0.0 as float)
//! int    = is_zero:bit (ctx: previous zero) | sign:bit (ctx: previous sign)
//!          bucket = index of the top one bit: unary, a context per position (23 and
//!          up share one); then if tz contexts and bucket >= 8: trailing zeros:6-bit
//!          tree, bits between flat; else the top 2 bits below the leading one by a
//!          per-bucket tree (buckets < 8; flat above), the rest flat
//! raw_int= zero, sign, 6-bit bucket, mantissa: all flat
//! ```
//!
//! * **Timestamps** are predicted by an integer alpha-beta filter in fixed point (so the
//!   decoder replays it bit for bit) whose gains start as a least-squares line fit and
//!   settle at 1/16 (position) and 1/1024 (step). The prediction is either the filtered
//!   grid point or `last + step`, whichever had the smaller recent error: the first wins
//!   when jitter does not accumulate (ticking scheduler), the second when it does. A
//!   residual beyond half a step (a gap) re-anchors the grid; two in a row restart the
//!   filter on the new interval. ~10 s steps with +-5 ms jitter cost ~4.1 bits.
//! * **Values** are *decimal at scale k* (0..=15) when `value == (m as f64) / 10^k`
//!   bit-exactly for some |m| <= 2^53 (percentages, load averages, byte counts, flags),
//!   coded as deltas of `m`; otherwise *float* (Gorilla XOR). The encoder picks per value
//!   and the "leave" flag is nearly free while a series keeps its representation. NaN
//!   payloads, -0.0, infinities and subnormals take the float path, so every f64 bit
//!   pattern round-trips; timestamps are any i64 and all arithmetic wraps, so huge or
//!   backwards deltas merely cost bits.
//!
//! Decoding validates what is cheap to validate (version, varints, the stream being
//! consumed exactly, the last timestamp matching the header) and never panics; the
//! count is checked against what the stream length can carry before allocating.
//!
//! Measured (`bytes_per_sample_report`, 240-sample chunks incl. header, bytes/sample):
//! cpu % 1.6, memory bytes 0.8, load 1.05, arbitrary-float rates 7.4 (their 52 random
//! mantissa bits are incompressible), 0/1 flags 0.6, constants 0.6; a regular timestamp
//! is ~0.5 of each. An encoder holds ~800 bytes of model state plus its output; encoding
//! takes ~90 ns and decoding ~60 ns per sample (release build).
use std::convert::Infallible;

/// Format version, the first byte of every chunk.
const VERSION: u8 = 1;

/// Bits of precision of an adaptive probability (of the bit being 0).
const PROB_BITS: u32 = 12;
const PROB_ONE: u16 = 1 << PROB_BITS;
const PROB_INIT: u16 = PROB_ONE / 2;
/// Probabilities stay within [PROB_MIN, PROB_ONE - PROB_MIN], so neither symbol ever gets
/// an empty range and every adaptive bit costs at least -log2(1 - PROB_MIN / PROB_ONE).
const PROB_MIN: i32 = 16;
/// Bits of a probability's observation counter (stored above the 12 probability bits).
const PROB_COUNT_BITS: u32 = 4;
const PROB_COUNT_MAX: u16 = (1 << PROB_COUNT_BITS) - 1;
/// Adaptation rate after n observations, in units of 2^-16: about 1/(n+2) at first (a
/// running frequency, so short chunks learn fast), then a fixed 2^-ADAPT_FINAL_SHIFT
/// that keeps following drifts without being too noisy.
const ADAPT_FINAL_SHIFT: u32 = 5;
const ADAPT_RATES: [i32; 1 << PROB_COUNT_BITS] = {
    let mut rates = [0; 1 << PROB_COUNT_BITS];
    let mut n = 0;
    while n < rates.len() {
        let running = (1 << 16) / (n as i32 + 2);
        let floor = 1 << (16 - ADAPT_FINAL_SHIFT);
        rates[n] = if running > floor { running } else { floor };
        n += 1;
    }
    rates[rates.len() - 1] = 1 << (16 - ADAPT_FINAL_SHIFT);
    rates
};
/// The range coder renormalizes (emits a byte) when its range drops below this.
const RANGE_TOP: u32 = 1 << 24;
/// Bytes the range encoder's flush appends; the decoder reads as many up front.
const FLUSH_BYTES: usize = 4;

/// Every sample codes at least three adaptive bits (timestamp zero flag, value "leave"
/// flag, value zero flag), and an adaptive bit costs at least -log2(4080/4096) ~ 0.0057
/// bits, so one stream byte carries fewer than 8 / (3 * 0.0057) ~ 470 samples (plus the
/// first value, and a few bytes of slack from the flush). A count above this bound
/// cannot come from the encoder, and rejecting it bounds decode allocation by input length.
const MAX_SAMPLES_PER_STREAM_BYTE: usize = 512;

/// Fractional bits of the timestamp filter's fixed-point state.
const TS_FRAC_BITS: u32 = 8;
/// Fractional bits of the timestamp filter's gains.
const TS_GAIN_BITS: u32 = 16;
/// Smallest position gain of the timestamp filter: 2^-TS_ALPHA_SHIFT.
const TS_ALPHA_SHIFT: u32 = 4;
/// Smallest step gain of the timestamp filter: 2^-TS_BETA_SHIFT.
const TS_BETA_SHIFT: u32 = 10;
/// Beyond this many samples both gains are at their minimum; capping keeps n^2 small.
const TS_MAX_FIT: u32 = 1 << 10;
/// The predictor choice follows errors averaged over ~2^TS_ERR_SHIFT samples...
const TS_ERR_SHIFT: u32 = 3;
/// ...kept with this many fractional bits...
const TS_ERR_FRAC_BITS: u32 = 4;
/// ...and each capped (ms) so the average cannot overflow.
const TS_ERR_CAP: u64 = 1 << 40;

/// Largest decimal scale tried: values with up to this many decimals are "decimal".
const MAX_SCALE: usize = 15;
/// Bits of the coded scale (MAX_SCALE < 2^SCALE_BITS).
const SCALE_BITS: u32 = 4;
/// Largest |m| of a decimal value; keeps `m as f64` exact and `m` well inside i64.
const MAX_MANTISSA: f64 = 9_007_199_254_740_992.0; // 2^53
/// Exact powers of ten (all of them are representable in an f64).
const POW10: [f64; MAX_SCALE + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Encoder heuristic: leaving the float representation for a decimal one must save at
/// least this many (estimated) bits, so arbitrary floats that happen to be short
/// decimals do not flip representation back and forth.
const FLOAT_TO_DECIMAL_MARGIN: u32 = 8;

/// Bits of a bucket (bit-length) index: magnitudes are < 2^64.
const BUCKET_BITS: u32 = 6;
/// Mantissa bits under an adaptive context (the rest are flat), per bucket...
const MANT_CTX_BITS: u32 = 2;
/// ...for buckets below this; larger magnitudes are noise in their low bits anyway.
const MANT_CTX_BUCKETS: usize = 8;
/// Contexts of the unary bucket code; wider residuals are rare enough to share one.
const UNARY_CONTEXTS: usize = 24;
/// Residuals of at least 2^TZ_MIN_BUCKET code their trailing zeros (when asked to);
/// for narrower ones that costs more than the bits it saves.
const TZ_MIN_BUCKET: u32 = 8;

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("chunk is truncated")]
    Truncated,
    #[error("unsupported chunk format version {0}")]
    UnsupportedVersion(u8),
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// First and last timestamp and sample count of a chunk, readable from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub count: u32,
    pub first_ts: i64,
    pub last_ts: i64,
}

// ---------------------------------------------------------------------------------------
// Adaptive probabilities and the range coder.

/// Adaptive probability that the next bit is 0: the low PROB_BITS bits hold it in units
/// of 2^-PROB_BITS (invariant: PROB_MIN <= p <= PROB_ONE - PROB_MIN), the bits above
/// count observations (saturating) to pick the adaptation rate.
#[derive(Debug, Clone, Copy)]
struct Prob(u16);

impl Default for Prob {
    fn default() -> Self {
        Prob(PROB_INIT)
    }
}

impl Prob {
    const P_MASK: u16 = PROB_ONE - 1;

    fn p(self) -> u32 {
        u32::from(self.0 & Self::P_MASK)
    }

    fn update(&mut self, bit: bool) {
        let count = self.0 >> PROB_BITS;
        let p = i32::from(self.0 & Self::P_MASK);
        let target = if bit { 0 } else { i32::from(PROB_ONE) };
        let p = p + (((target - p) * ADAPT_RATES[usize::from(count)]) >> 16);
        let p = p.clamp(PROB_MIN, i32::from(PROB_ONE) - PROB_MIN) as u16;
        self.0 = ((count + 1).min(PROB_COUNT_MAX) << PROB_BITS) | p;
    }
}

/// 64 contexts: a tree for a 6-bit symbol (node 1 is the root, node `n` has children
/// 2n and 2n+1) or the positions of a unary code. (Arrays this long lack `Default`.)
#[derive(Debug, Clone)]
struct Probs64([Prob; 64]);

impl Default for Probs64 {
    fn default() -> Self {
        Probs64([Prob::default(); 64])
    }
}

/// One side of the range coder. Models are written once against this trait so encoder
/// and decoder cannot drift apart: the encoder codes the bit or value it is given and
/// returns it; the decoder ignores the argument and returns what it reads.
trait Coder {
    type Error;
    /// True for the encoder: lets models skip encoder-only planning when decoding.
    const ENCODES: bool;
    fn bit(&mut self, prob: &mut Prob, bit: bool) -> Result<bool, Self::Error>;
    /// The low `n` bits of `value` (n <= 64) at probability 1/2 each.
    fn direct(&mut self, value: u64, n: u32) -> Result<u64, Self::Error>;
    /// Reports a decoded impossibility; the encoder only produces valid streams.
    fn check(&self, ok: bool, what: &'static str) -> Result<(), Self::Error>;
}

/// Range encoder. `low` has 33 significant bits (bit 32 is a carry not yet propagated
/// into `cache`); `cache` and the 0xFF bytes after it are output a carry may still
/// increment, so they are held back until the carry is known.
#[derive(Debug, Clone)]
struct RangeEncoder {
    low: u64,
    range: u32,
    cache: u8,
    /// Bytes held back: `cache` followed by `pending - 1` bytes of 0xFF.
    pending: u64,
    out: Vec<u8>,
}

impl Default for RangeEncoder {
    fn default() -> Self {
        RangeEncoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            pending: 1,
            out: Vec::new(),
        }
    }
}

impl RangeEncoder {
    fn shift_low(low: &mut u64, cache: &mut u8, pending: &mut u64, out: &mut Vec<u8>) {
        // Emit held-back bytes once the top byte can no longer change by a carry.
        if (*low as u32) < 0xFF00_0000 || (*low >> 32) != 0 {
            let carry = (*low >> 32) as u8;
            let mut byte = *cache;
            while *pending > 0 {
                out.push(byte.wrapping_add(carry));
                byte = 0xFF;
                *pending -= 1;
            }
            *cache = (*low >> 24) as u8;
        }
        *pending += 1;
        *low = (*low & 0x00FF_FFFF) << 8;
    }

    fn normalize(&mut self) {
        while self.range < RANGE_TOP {
            self.range <<= 8;
            Self::shift_low(
                &mut self.low,
                &mut self.cache,
                &mut self.pending,
                &mut self.out,
            );
        }
    }

    /// Appends the bytes a flush would produce, without disturbing `self`.
    fn flush_into(&self, out: &mut Vec<u8>) {
        let (mut low, mut cache, mut pending) = (self.low, self.cache, self.pending);
        for _ in 0..=FLUSH_BYTES {
            Self::shift_low(&mut low, &mut cache, &mut pending, out);
        }
    }

    /// Length of `out` plus flush, minus the omitted always-zero first byte.
    fn stream_len(&self) -> usize {
        // The flush emits every held-back byte plus the 4 bytes of `low`, but the last
        // byte it shifts into `cache` stays unemitted.
        let held = usize::try_from(self.pending).unwrap_or(usize::MAX);
        (self.out.len() + held + FLUSH_BYTES).saturating_sub(1)
    }
}

impl Coder for RangeEncoder {
    type Error = Infallible;
    const ENCODES: bool = true;

    fn bit(&mut self, prob: &mut Prob, bit: bool) -> Result<bool, Infallible> {
        let bound = (self.range >> PROB_BITS) * prob.p();
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
        } else {
            self.range = bound;
        }
        prob.update(bit);
        self.normalize();
        Ok(bit)
    }

    fn direct(&mut self, value: u64, n: u32) -> Result<u64, Infallible> {
        for i in (0..n).rev() {
            self.range >>= 1;
            if (value >> i) & 1 == 1 {
                self.low += u64::from(self.range);
            }
            self.normalize();
        }
        Ok(value & low_mask(n))
    }

    fn check(&self, ok: bool, _what: &'static str) -> Result<(), Infallible> {
        debug_assert!(ok, "encoder produced an invalid stream: {_what}");
        Ok(())
    }
}

struct RangeDecoder<'a> {
    data: &'a [u8],
    pos: usize,
    range: u32,
    /// Invariant for a valid stream: code < range.
    code: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(data: &'a [u8]) -> Result<Self, CodecError> {
        let mut dec = RangeDecoder {
            data,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..FLUSH_BYTES {
            dec.code = (dec.code << 8) | u32::from(dec.next_byte()?);
        }
        if dec.code == u32::MAX {
            return Err(CodecError::Corrupt("range coder start"));
        }
        Ok(dec)
    }

    fn next_byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self.data.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn normalize(&mut self) -> Result<(), CodecError> {
        while self.range < RANGE_TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte()?);
        }
        Ok(())
    }

    /// The encoder's flush leaves exactly the bytes the decoder reads.
    fn finish(&self) -> Result<(), CodecError> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(CodecError::Corrupt("trailing bytes after the stream"))
        }
    }
}

impl Coder for RangeDecoder<'_> {
    type Error = CodecError;
    const ENCODES: bool = false;

    fn bit(&mut self, prob: &mut Prob, _bit: bool) -> Result<bool, CodecError> {
        // Never panics on garbage: bound < range because prob < PROB_ONE, and each
        // subtraction is guarded by the comparison that selects it.
        let bound = (self.range >> PROB_BITS) * prob.p();
        let bit = self.code >= bound;
        if bit {
            self.code -= bound;
            self.range -= bound;
        } else {
            self.range = bound;
        }
        prob.update(bit);
        self.normalize()?;
        Ok(bit)
    }

    fn direct(&mut self, _value: u64, n: u32) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for _ in 0..n {
            self.range >>= 1;
            let bit = self.code >= self.range;
            if bit {
                self.code -= self.range;
            }
            value = (value << 1) | u64::from(bit);
            self.normalize()?;
        }
        Ok(value)
    }

    fn check(&self, ok: bool, what: &'static str) -> Result<(), CodecError> {
        if ok {
            Ok(())
        } else {
            Err(CodecError::Corrupt(what))
        }
    }
}

fn low_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Index of the top set bit of `x` (x >= 1 when encoding; the decoder's dummy 0 maps to 0).
fn bucket_of(x: u64) -> u32 {
    63 - (x | 1).leading_zeros()
}

/// Codes the low `bits` bits of `value` MSB first through a context tree.
/// Invariant: `probs.len() >= 1 << bits`, so every node index is in bounds.
fn code_tree<C: Coder>(
    c: &mut C,
    probs: &mut [Prob],
    bits: u32,
    value: u32,
) -> Result<u32, C::Error> {
    let mut node = 1usize;
    for i in (0..bits).rev() {
        let bit = c.bit(&mut probs[node], (value >> i) & 1 == 1)?;
        node = (node << 1) | usize::from(bit);
    }
    Ok((node - (1 << bits)) as u32)
}

// ---------------------------------------------------------------------------------------
// Integer residuals.

/// Adaptive model of signed integer residuals: zero flag, sign, bit-length bucket
/// (unary, a context per position: small residuals take few, well-predicted decisions),
/// then the bits below the leading one. Given trailing-zero contexts, wide residuals
/// code their trailing-zero count first and only the bits between (byte counts move in
/// pages of 4096).
#[derive(Debug, Clone, Default)]
struct IntModel {
    /// Context: whether the previous residual was zero (zeros come in runs).
    zero: [Prob; 2],
    /// Context: sign of the previous nonzero residual.
    sign: [Prob; 2],
    /// Unary bucket: `bucket[i]` is the probability that the bucket is exactly i given
    /// it is at least i (positions from UNARY_CONTEXTS - 1 on share the last context).
    bucket: [Prob; UNARY_CONTEXTS],
    /// Per small bucket, a tree over the top MANT_CTX_BITS bits below the leading one.
    mant: [[Prob; 1 << MANT_CTX_BITS]; MANT_CTX_BUCKETS],
    prev_zero: bool,
    prev_neg: bool,
}

impl IntModel {
    fn code<C: Coder>(
        &mut self,
        c: &mut C,
        tz_ctx: Option<&mut Probs64>,
        r: i64,
    ) -> Result<i64, C::Error> {
        let zero = c.bit(&mut self.zero[usize::from(self.prev_zero)], r == 0)?;
        self.prev_zero = zero;
        if zero {
            return Ok(0);
        }
        let neg = c.bit(&mut self.sign[usize::from(self.prev_neg)], r < 0)?;
        self.prev_neg = neg;
        let mag = r.unsigned_abs();
        let bucket = code_unary(c, &mut self.bucket, bucket_of(mag))?;
        let top = 1u64 << bucket;
        let mag = if let Some(tz_ctx) = tz_ctx.filter(|_| bucket >= TZ_MIN_BUCKET) {
            let tz = code_tree(c, &mut tz_ctx.0, BUCKET_BITS, mag.trailing_zeros())?;
            c.check(tz <= bucket, "trailing zeros above the leading one")?;
            if tz >= bucket {
                top
            } else {
                // Bits strictly between the leading one and the lowest one (bit tz).
                let between = c.direct(mag >> (tz + 1), bucket - tz - 1)?;
                top | (between << (tz + 1)) | (1u64 << tz)
            }
        } else {
            let ctx_bits = bucket.min(MANT_CTX_BITS);
            let flat_bits = bucket - ctx_bits;
            let hi = match self.mant.get_mut(bucket as usize) {
                Some(tree) => u64::from(code_tree(c, tree, ctx_bits, (mag >> flat_bits) as u32)?),
                None => c.direct(mag >> flat_bits, ctx_bits)?,
            };
            let lo = c.direct(mag, flat_bits)?;
            top | ((hi << flat_bits) & (top - 1)) | lo
        };
        // Two's complement wrap maps a magnitude of 2^63 back to i64::MIN.
        let r = mag as i64;
        Ok(if neg { r.wrapping_neg() } else { r })
    }
}

/// Codes `value` (at most 63) as that many 1s and a terminating 0 (none after 63), each
/// under its position's context.
fn code_unary<C: Coder>(
    c: &mut C,
    probs: &mut [Prob; UNARY_CONTEXTS],
    value: u32,
) -> Result<u32, C::Error> {
    let mut n = 0;
    while n < 63 && c.bit(&mut probs[(n as usize).min(UNARY_CONTEXTS - 1)], n < value)? {
        n += 1;
    }
    Ok(n)
}

/// Codes a rare, arbitrary integer without adaptive state (a jump to a new scale should
/// not disturb the statistics of the steady-state residuals): zero flag, sign, 6-bit
/// bucket, mantissa, all flat.
fn code_raw_int<C: Coder>(c: &mut C, r: i64) -> Result<i64, C::Error> {
    if c.direct(u64::from(r == 0), 1)? == 1 {
        return Ok(0);
    }
    let neg = c.direct(u64::from(r < 0), 1)? == 1;
    let mag = r.unsigned_abs();
    let bucket = c.direct(u64::from(bucket_of(mag)), BUCKET_BITS)? as u32;
    let mag = (1u64 << bucket) | c.direct(mag, bucket)?;
    let r = mag as i64;
    Ok(if neg { r.wrapping_neg() } else { r })
}

// ---------------------------------------------------------------------------------------
// Timestamps.

/// Timestamp predictor: an alpha-beta filter (a smoothed position on a regular grid plus
/// a step estimate) in fixed point with TS_FRAC_BITS fractional bits. Its gains start as
/// those of a least-squares line fit through all samples so far (so the step is accurate
/// after a few samples even though each interval is jittered) and bottom out at
/// 2^-TS_ALPHA_SHIFT and 2^-TS_BETA_SHIFT to keep tracking drift.
///
/// Two predictions compete: the grid (`last + lag + step`, best when jitter does not
/// accumulate, as with a ticking scheduler) and `last + step` (best when it does, as with
/// sleep-after-scrape). Whichever had the smaller recent error is used; both sides
/// replay the choice from decoded data.
///
/// All arithmetic wraps: absurd inputs give useless predictions, never a panic.
#[derive(Debug, Clone, Default)]
struct TsModel {
    last: i64,
    /// Estimated step between samples, fixed point.
    step: i64,
    /// Filtered grid position minus `last`, fixed point.
    lag: i64,
    /// Samples absorbed by the filter since it (re)started, capped at TS_MAX_FIT.
    fitted: u32,
    /// Whether the previous sample was an outlier: a second one in a row means the
    /// interval really changed and the filter restarts from the latest delta.
    after_outlier: bool,
    /// Recent mean absolute error (ms, TS_ERR_FRAC_BITS fractional bits) of each prediction.
    err_grid: i64,
    err_last: i64,
    residual: IntModel,
}

impl TsModel {
    fn start(first_ts: i64) -> Self {
        TsModel {
            last: first_ts,
            fitted: 1,
            ..TsModel::default()
        }
    }

    fn code<C: Coder>(&mut self, c: &mut C, ts: i64) -> Result<i64, C::Error> {
        let grid_offset = self.lag.wrapping_add(self.step);
        let offset = if self.err_grid <= self.err_last {
            grid_offset
        } else {
            self.step
        };
        let predicted = self.last.wrapping_add(round_fixed(offset));
        let r = ts.wrapping_sub(predicted);
        // The first delta is the interval itself, nothing like the jitter that follows;
        // it is coded flat so it does not skew the residual statistics.
        let r = if self.fitted < 2 {
            code_raw_int(c, r)?
        } else {
            self.residual.code(c, None, r)?
        };
        let ts = predicted.wrapping_add(r);

        let delta = ts.wrapping_sub(self.last) << TS_FRAC_BITS;
        let err_grid = delta.wrapping_sub(grid_offset);
        track_error(&mut self.err_grid, err_grid);
        track_error(&mut self.err_last, delta.wrapping_sub(self.step));
        // A residual beyond half a step is a gap or a changed interval, not jitter.
        let outlier = self.fitted >= 2
            && r.unsigned_abs().saturating_mul(2) > (self.step.unsigned_abs() >> TS_FRAC_BITS);
        if !outlier {
            let n = i128::from(self.fitted) + 1;
            let alpha = ((4 * n - 2) << TS_GAIN_BITS) / (n * (n + 1));
            let beta = (6 << TS_GAIN_BITS) / (n * (n + 1));
            let alpha = alpha.max(1 << (TS_GAIN_BITS - TS_ALPHA_SHIFT));
            let beta = beta.max(1 << (TS_GAIN_BITS - TS_BETA_SHIFT));
            // The grid moves alpha of the way to the sample, so it ends up behind it by
            // (1 - alpha) * error.
            self.lag = gain(err_grid, alpha).wrapping_sub(err_grid);
            self.step = self.step.wrapping_add(gain(err_grid, beta));
            self.fitted = (self.fitted + 1).min(TS_MAX_FIT);
        } else if self.after_outlier {
            self.step = delta;
            self.lag = 0;
            self.fitted = 2;
        } else {
            self.lag = 0;
        }
        self.after_outlier = outlier;
        self.last = ts;
        Ok(ts)
    }
}

/// Rounds a fixed-point timestamp offset to whole milliseconds.
fn round_fixed(x: i64) -> i64 {
    x.wrapping_add(1 << (TS_FRAC_BITS - 1)) >> TS_FRAC_BITS
}

/// `x * g / 2^TS_GAIN_BITS` rounded to nearest, wrapping like the rest of the filter.
/// Rounding (not flooring) matters: with a step gain of 2^-10 a bias of half a unit per
/// update would hold the filter ~512 units off in steady state.
fn gain(x: i64, g: i128) -> i64 {
    ((i128::from(x) * g + (1 << (TS_GAIN_BITS - 1))) >> TS_GAIN_BITS) as i64
}

/// Moves a running mean absolute error 1/2^TS_ERR_SHIFT of the way towards |err|.
fn track_error(mean: &mut i64, err: i64) {
    let sample = (err.unsigned_abs() >> TS_FRAC_BITS).min(TS_ERR_CAP) as i64;
    let sample = sample << TS_ERR_FRAC_BITS;
    *mean += (sample - *mean) >> TS_ERR_SHIFT;
}

// ---------------------------------------------------------------------------------------
// Values.

/// `Some(m)` if `v == (m as f64) / 10^k` bit-exactly with |m| <= 2^53.
fn mantissa_at(v: f64, k: usize) -> Option<i64> {
    let scaled = v * POW10[k];
    // Also rejects NaN and infinities.
    if scaled.is_nan() || scaled.abs() > MAX_MANTISSA {
        return None;
    }
    let m = scaled.round() as i64;
    (decimal_value(m, k).to_bits() == v.to_bits()).then_some(m)
}

/// The value of a decimal representation; the decoder's only way to build one.
fn decimal_value(m: i64, k: usize) -> f64 {
    m as f64 / POW10[k]
}

/// The smallest scale at which `v` is decimal. Being decimal at k implies being decimal
/// at every larger k (while |m| fits), so the first hit is the cheapest; once |v * 10^k|
/// exceeds MAX_MANTISSA no larger k can fit either.
fn min_scale(v: f64) -> Option<(usize, i64)> {
    (0..=MAX_SCALE)
        .take_while(|&k| (v * POW10[k]).abs() <= MAX_MANTISSA)
        .find_map(|k| mantissa_at(v, k).map(|m| (k, m)))
}

/// `v` rounded at scale `k`: the base a new scale's mantissa is coded against. Saturates
/// (NaN gives 0) deterministically, so the decoder derives the same base.
fn rescaled(v: f64, k: usize) -> i64 {
    (v * POW10[k]).round() as i64
}

fn bit_len(x: u64) -> u32 {
    64 - x.leading_zeros()
}

/// Estimated cost in bits of a float-path XOR; only steers encoder choices.
fn float_cost(xor: u64) -> u32 {
    if xor == 0 {
        1
    } else {
        64 - xor.leading_zeros() - xor.trailing_zeros() + 2 * BUCKET_BITS
    }
}

/// Estimated cost in bits of jumping to a new scale; only steers encoder choices.
fn rescale_cost(r: i64) -> u32 {
    SCALE_BITS + 2 + BUCKET_BITS + bit_len(r.unsigned_abs())
}

/// How the encoder represents one value (decided before coding; see `ValueModel::code`).
enum Plan {
    /// Decimal at the current scale, with this mantissa.
    Stay(i64),
    /// Decimal at a new scale.
    Rescale(usize, i64),
    /// Float XOR against the previous value.
    Float,
}

#[derive(Debug, Clone, Default)]
struct ValueModel {
    prev_bits: u64,
    /// Whether the current representation is decimal (else float). Float is the initial
    /// state: the first value is coded against +0.0 and picks its representation like
    /// any other.
    in_decimal: bool,
    /// Decimal scale and previous mantissa; meaningful only when `in_decimal`.
    scale: u8,
    prev_m: i64,
    /// Context: whether the current representation is decimal. Bit 1 = leave it.
    leave: [Prob; 2],
    /// After leaving decimal: 1 = go float, 0 = new scale.
    to_float: Prob,
    scale_tree: [Prob; 1 << SCALE_BITS],
    m_delta: IntModel,
    m_delta_tz: Probs64,
    xor_zero: Prob,
    xor_lz: Probs64,
    xor_tz: Probs64,
}

impl ValueModel {
    fn prev(&self) -> f64 {
        f64::from_bits(self.prev_bits)
    }

    /// Encoder-only: picks the representation of `v`.
    fn plan(&self, v: f64) -> Plan {
        if self.in_decimal {
            if let Some(m) = mantissa_at(v, usize::from(self.scale)) {
                return Plan::Stay(m);
            }
        }
        let Some((k, m)) = min_scale(v) else {
            return Plan::Float;
        };
        let dec = rescale_cost(m.wrapping_sub(rescaled(self.prev(), k)));
        let float = float_cost(v.to_bits() ^ self.prev_bits);
        let margin = if self.in_decimal {
            0
        } else {
            FLOAT_TO_DECIMAL_MARGIN
        };
        if dec + margin < float {
            Plan::Rescale(k, m)
        } else {
            Plan::Float
        }
    }

    fn code<C: Coder>(&mut self, c: &mut C, v: f64) -> Result<f64, C::Error> {
        let plan = if C::ENCODES {
            self.plan(v)
        } else {
            Plan::Float // ignored: every decision below is read from the stream
        };
        let stay = matches!(
            (&plan, self.in_decimal),
            (Plan::Stay(_), _) | (Plan::Float, false)
        );
        let leave = c.bit(&mut self.leave[usize::from(self.in_decimal)], !stay)?;
        let go_float = match (self.in_decimal, leave) {
            (false, false) => true,
            (false, true) | (true, false) => false,
            (true, true) => c.bit(&mut self.to_float, matches!(plan, Plan::Float))?,
        };
        let value = if go_float {
            self.in_decimal = false;
            let xor = self.code_xor(c, v.to_bits() ^ self.prev_bits)?;
            f64::from_bits(self.prev_bits ^ xor)
        } else if leave {
            let (k, m) = match plan {
                Plan::Rescale(k, m) => (k, m),
                _ => (0, 0),
            };
            let k = code_tree(c, &mut self.scale_tree, SCALE_BITS, k as u32)? as usize;
            c.check(k <= MAX_SCALE, "decimal scale out of range")?;
            let k = k.min(MAX_SCALE);
            let base = rescaled(self.prev(), k);
            let r = code_raw_int(c, m.wrapping_sub(base))?;
            self.in_decimal = true;
            self.scale = k as u8;
            self.prev_m = base.wrapping_add(r);
            decimal_value(self.prev_m, k)
        } else {
            let m = match plan {
                Plan::Stay(m) => m,
                _ => 0,
            };
            let r =
                self.m_delta
                    .code(c, Some(&mut self.m_delta_tz), m.wrapping_sub(self.prev_m))?;
            self.prev_m = self.prev_m.wrapping_add(r);
            decimal_value(self.prev_m, usize::from(self.scale))
        };
        self.prev_bits = value.to_bits();
        Ok(value)
    }

    fn code_xor<C: Coder>(&mut self, c: &mut C, xor: u64) -> Result<u64, C::Error> {
        if c.bit(&mut self.xor_zero, xor == 0)? {
            return Ok(0);
        }
        let lz = code_tree(c, &mut self.xor_lz.0, BUCKET_BITS, xor.leading_zeros())?;
        let tz = code_tree(c, &mut self.xor_tz.0, BUCKET_BITS, xor.trailing_zeros())?;
        c.check(lz + tz <= 63, "float xor wider than 64 bits")?;
        let tz = tz.min(63 - lz);
        // The meaningful bits run from bit 63-lz down to bit tz, both of which are 1.
        let width = 64 - lz - tz;
        let top = 1u64 << (63 - lz);
        let bottom = 1u64 << tz;
        let inner = if width >= 2 {
            c.direct(xor >> (tz + 1), width - 2)? << (tz + 1)
        } else {
            0
        };
        Ok(top | inner | bottom)
    }
}

// ---------------------------------------------------------------------------------------
// Public API.

/// Appends samples; the encoding is self-describing (contains the count).
///
/// Memory: ~800 bytes of model state plus the coded output so far (about as long as the
/// finished chunk). Samples beyond `u32::MAX` in one chunk are dropped (the header
/// cannot count them); callers roll chunks after a few hundred samples.
#[derive(Debug, Clone, Default)]
pub struct ChunkEncoder {
    count: u32,
    first_ts: i64,
    rc: RangeEncoder,
    ts: TsModel,
    value: ValueModel,
}

impl ChunkEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, ts_ms: i64, value: f64) {
        if self.count == u32::MAX {
            return;
        }
        if self.count == 0 {
            self.first_ts = ts_ms;
            self.ts = TsModel::start(ts_ms);
        } else {
            let Ok(_) = self.ts.code(&mut self.rc, ts_ms);
        }
        let Ok(_) = self.value.code(&mut self.rc, value);
        self.count += 1;
    }

    /// Samples pushed.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    #[cfg(test)]
    pub fn first_ts(&self) -> Option<i64> {
        (self.count > 0).then_some(self.first_ts)
    }

    pub fn last_ts(&self) -> Option<i64> {
        (self.count > 0).then_some(self.ts.last)
    }

    /// Bytes of a complete, decodable chunk of everything pushed so far: a small header,
    /// a copy of the coded output and the flush of a copy of the coder's state.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(VERSION);
        put_uvarint(&mut out, u64::from(self.count));
        if self.count > 0 {
            put_svarint(&mut out, self.first_ts);
            put_svarint(&mut out, self.ts.last.wrapping_sub(self.first_ts));
            // The coder's first byte is always zero (its interval lies inside [0, 1)), so
            // it is left out; it is still pending in the state while `rc.out` is empty.
            match self.rc.out.split_first() {
                Some((&zero, rest)) => {
                    debug_assert_eq!(zero, 0);
                    out.extend_from_slice(rest);
                    self.rc.flush_into(&mut out);
                }
                None => {
                    let mut tail = Vec::with_capacity(2 * FLUSH_BYTES);
                    self.rc.flush_into(&mut tail);
                    out.extend_from_slice(tail.get(1..).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn encoded_len(&self) -> usize {
        let mut len = 1 + uvarint_len(u64::from(self.count));
        if self.count > 0 {
            len += svarint_len(self.first_ts)
                + svarint_len(self.ts.last.wrapping_sub(self.first_ts))
                + self.rc.stream_len();
        }
        len
    }
}

/// Decodes a chunk produced by [`ChunkEncoder::bytes`].
pub fn decode(bytes: &[u8]) -> Result<Vec<(i64, f64)>, CodecError> {
    let (header, stream) = parse_header(bytes)?;
    if header.count == 0 {
        return if stream.is_empty() {
            Ok(Vec::new())
        } else {
            Err(CodecError::Corrupt("trailing bytes after an empty chunk"))
        };
    }
    let count = header.count as usize;
    if count > stream.len().saturating_mul(MAX_SAMPLES_PER_STREAM_BYTE) {
        return Err(CodecError::Corrupt("count larger than the stream can hold"));
    }
    let mut out = Vec::with_capacity(count);
    let mut rc = RangeDecoder::new(stream)?;
    let mut ts = TsModel::start(header.first_ts);
    let mut value = ValueModel::default();
    out.push((header.first_ts, value.code(&mut rc, 0.0)?));
    for _ in 1..count {
        let t = ts.code(&mut rc, 0)?;
        let v = value.code(&mut rc, 0.0)?;
        out.push((t, v));
    }
    rc.finish()?;
    if ts.last != header.last_ts {
        return Err(CodecError::Corrupt(
            "last timestamp differs from the header",
        ));
    }
    Ok(out)
}

/// First and last timestamp and count of an encoded chunk, from its header only.
pub fn header(bytes: &[u8]) -> Result<ChunkHeader, CodecError> {
    parse_header(bytes).map(|(h, _)| h)
}

fn parse_header(bytes: &[u8]) -> Result<(ChunkHeader, &[u8]), CodecError> {
    let (&version, mut rest) = bytes.split_first().ok_or(CodecError::Truncated)?;
    if version != VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let count = u32::try_from(get_uvarint(&mut rest)?)
        .map_err(|_| CodecError::Corrupt("count exceeds u32"))?;
    if count == 0 {
        let empty = ChunkHeader {
            count,
            first_ts: 0,
            last_ts: 0,
        };
        return Ok((empty, rest));
    }
    let first_ts = get_svarint(&mut rest)?;
    let last_ts = first_ts.wrapping_add(get_svarint(&mut rest)?);
    Ok((
        ChunkHeader {
            count,
            first_ts,
            last_ts,
        },
        rest,
    ))
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

fn uvarint_len(v: u64) -> usize {
    (bit_len(v).max(1) as usize).div_ceil(7)
}

fn svarint_len(v: i64) -> usize {
    uvarint_len(zigzag(v))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn get_uvarint(input: &mut &[u8]) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for i in 0..MAX_VARINT_LEN {
        let (&byte, rest) = input.split_first().ok_or(CodecError::Truncated)?;
        *input = rest;
        let bits = u64::from(byte & 0x7F);
        // The tenth byte may only carry the top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && bits > 1 {
            return Err(CodecError::Corrupt("varint overflows u64"));
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CodecError::Corrupt("varint too long"))
}

fn get_svarint(input: &mut &[u8]) -> Result<i64, CodecError> {
    let u = get_uvarint(input)?;
    Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Encodes `samples`, checks every public accessor, decodes and compares bit-exactly.
    fn roundtrip(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut enc = ChunkEncoder::new();
        for &(t, v) in samples {
            enc.push(t, v);
        }
        let bytes = enc.bytes();
        assert_eq!(bytes.len(), enc.encoded_len(), "encoded_len");
        assert_eq!(enc.len(), samples.len());
        assert_eq!(enc.is_empty(), samples.is_empty());
        assert_eq!(enc.first_ts(), samples.first().map(|s| s.0));
        assert_eq!(enc.last_ts(), samples.last().map(|s| s.0));
        let h = header(&bytes).expect("header");
        assert_eq!(h.count as usize, samples.len());
        if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
            assert_eq!((h.first_ts, h.last_ts), (first.0, last.0));
        }
        let decoded = decode(&bytes).expect("decode");
        assert_eq!(decoded.len(), samples.len());
        for (i, (a, b)) in samples.iter().zip(&decoded).enumerate() {
            assert_eq!(a.0, b.0, "ts of sample {i}");
            assert_eq!(
                a.1.to_bits(),
                b.1.to_bits(),
                "value of sample {i}: {} vs {}",
                a.1,
                b.1
            );
        }
        bytes
    }

    fn zip_ts(ts: &[i64], values: impl IntoIterator<Item = f64>) -> Vec<(i64, f64)> {
        ts.iter().copied().zip(values).collect()
    }

    /// Scrape times: every 10 s with 0..=5 ms of jitter either way (not accumulating,
    /// as with a ticking scheduler).
    fn vitals_ts(rng: &mut StdRng, n: usize) -> Vec<i64> {
        let t0 = 1_760_000_000_000 + rng.random_range(0..10_000);
        (0..n as i64)
            .map(|i| t0 + i * 10_000 + rng.random_range(-5..=5))
            .collect()
    }

    /// Vitals-like series sharing one set of scrape times, by kind.
    fn vitals(rng: &mut StdRng, n: usize) -> Vec<(&'static str, Vec<(i64, f64)>)> {
        let ts = vitals_ts(rng, n);
        let mut cpu = rng.random_range(0..10_000i64);
        let cpu_pct = (0..n).map(|_| {
            cpu = (cpu + rng.random_range(-100..=100)).clamp(0, 10_000);
            cpu as f64 / 100.0
        });
        let cpu_pct = zip_ts(&ts, cpu_pct.collect::<Vec<_>>());
        let mut mem = 4096 * rng.random_range(1_000_000..3_000_000i64);
        let mem_bytes = (0..n).map(|_| {
            if rng.random_bool(0.1) {
                mem += 4096 * rng.random_range(-256..=256);
            }
            mem as f64
        });
        let mem_bytes = zip_ts(&ts, mem_bytes.collect::<Vec<_>>());
        let mut load = rng.random_range(0..400i64);
        let load_avg = (0..n).map(|_| {
            load = (load + rng.random_range(-5..=5)).max(0);
            load as f64 / 100.0
        });
        let load_avg = zip_ts(&ts, load_avg.collect::<Vec<_>>());
        // A rate the way a collector derives one: counter delta over elapsed seconds.
        let net_rate = (0..n).map(|i| {
            let elapsed_ms = if i == 0 { 10_000 } else { ts[i] - ts[i - 1] };
            rng.random_range(0..2_000_000) as f64 / (elapsed_ms as f64 / 1000.0)
        });
        let net_rate = zip_ts(&ts, net_rate.collect::<Vec<_>>());
        let mut up = 1.0;
        let flag = (0..n).map(|_| {
            if rng.random_bool(0.01) {
                up = 1.0 - up;
            }
            up
        });
        let flag = zip_ts(&ts, flag.collect::<Vec<_>>());
        let constant = zip_ts(&ts, std::iter::repeat(16_777_216_000.0));
        vec![
            ("cpu_pct", cpu_pct),
            ("mem_bytes", mem_bytes),
            ("load_avg", load_avg),
            ("net_rate", net_rate),
            ("flag", flag),
            ("constant", constant),
        ]
    }

    fn seeded() -> (u64, StdRng) {
        let seed: u64 = rand::rng().random();
        (seed, StdRng::seed_from_u64(seed))
    }

    #[test]
    fn roundtrip_vitals_series() {
        let (_, mut rng) = seeded();
        for n in [0, 1, 2, 3, 120, 240] {
            for (_, series) in vitals(&mut rng, n) {
                roundtrip(&series);
            }
        }
    }

    #[test]
    fn roundtrip_special_floats() {
        let specials = [
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7FF0_0000_0000_0001), // signalling NaN payload
            f64::from_bits(0xFFF8_DEAD_BEEF_0001), // negative quiet NaN payload
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::from_bits(1), // smallest subnormal
            -f64::from_bits(0x000F_FFFF_FFFF_FFFF),
            f64::MIN,
            f64::MAX,
            f64::EPSILON,
            0.1 + 0.2,
            1e15 + 0.3,
            9_007_199_254_740_993.0,
            -12.37,
            12.37,
            1.0,
        ];
        let ts: Vec<i64> = (0..specials.len() as i64).map(|i| i * 10_000).collect();
        roundtrip(&zip_ts(&ts, specials));
        let reversed: Vec<f64> = specials.iter().rev().copied().collect();
        roundtrip(&zip_ts(&ts, reversed));
        for &v in &specials {
            roundtrip(&[(0, v)]);
            roundtrip(&zip_ts(&ts, std::iter::repeat(v)));
            // A special value in the middle of a decimal series and back.
            roundtrip(&zip_ts(&ts, [1.5, 2.25, v, 2.5, v, v, 3.0]));
        }
    }

    #[test]
    fn roundtrip_timestamp_extremes() {
        let cases: [&[i64]; 8] = [
            &[i64::MIN, i64::MAX, i64::MIN, 0, i64::MAX, i64::MAX],
            &[i64::MAX, i64::MAX - 1, i64::MAX],
            &[i64::MIN, i64::MIN + 1, i64::MIN],
            &[5, 5, 5, 5, 5],
            &[30_000, 20_000, 10_000, 0, -10_000, -20_000],
            &[0, 10_000, 5_000, 20_000, 20_000, 15_000, 1 << 62, 0],
            &[
                1_760_000_000_000,
                1_760_000_010_003,
                1_760_086_400_000,
                1_760_086_410_001,
            ],
            &[
                0, 10_000, 20_000, 50_000, 60_000, 30_000, 40_000, 70_000, 80_000,
            ],
        ];
        for ts in cases {
            roundtrip(&zip_ts(ts, (0..).map(f64::from)));
        }
        // A long regular run with a gap and an interval change in the middle.
        let mut ts: Vec<i64> = (0..100).map(|i| i * 10_000).collect();
        ts.extend((0..100).map(|i| 5_000_000 + i * 30_000));
        roundtrip(&zip_ts(&ts, std::iter::repeat(1.0)));
    }

    #[test]
    fn incremental_bytes_always_decode() {
        let (seed, mut rng) = seeded();
        for (kind, series) in vitals(&mut rng, 40) {
            let mut enc = ChunkEncoder::new();
            for (i, &(t, v)) in series.iter().enumerate() {
                enc.push(t, v);
                let bytes = enc.bytes();
                assert_eq!(bytes.len(), enc.encoded_len(), "seed {seed} {kind}");
                let decoded = decode(&bytes).expect("decode prefix");
                assert_eq!(decoded.len(), i + 1, "seed {seed} {kind}");
                assert_eq!(decoded[i].0, t, "seed {seed} {kind}");
                assert_eq!(decoded[i].1.to_bits(), v.to_bits(), "seed {seed} {kind}");
            }
        }
    }

    /// A random timestamp sequence of one of several shapes, from tidy to hostile.
    fn random_ts(rng: &mut StdRng, n: usize) -> Vec<i64> {
        let mut t: i64 = rng.random();
        let step: i64 = match rng.random_range(0..3) {
            0 => rng.random_range(0..100_000),
            1 => rng.random(),
            _ => rng.random_range(-1_000..1_000),
        };
        let shape = rng.random_range(0..4);
        (0..n)
            .map(|_| {
                t = match shape {
                    0 => t.wrapping_add(step),
                    1 => t
                        .wrapping_add(step)
                        .wrapping_add(rng.random_range(-50..=50)),
                    2 => rng.random(),
                    _ => t.wrapping_add(rng.random_range(-3..=3i64).wrapping_mul(step)),
                };
                t
            })
            .collect()
    }

    /// A random value sequence of one of several shapes.
    fn random_values(rng: &mut StdRng, n: usize) -> Vec<f64> {
        let shape = rng.random_range(0..5);
        let k = rng.random_range(0..=17);
        let mut m: i64 = rng.random_range(-1_000_000..1_000_000);
        let mut x: f64 = rng.random_range(-1e6..1e6);
        (0..n)
            .map(|_| match shape {
                0 => f64::from_bits(rng.random()),
                1 => {
                    m = m.wrapping_add(rng.random_range(-1_000..=1_000));
                    m as f64 / 10f64.powi(k)
                }
                2 => {
                    x += rng.random_range(-1.0..1.0);
                    x
                }
                3 => match rng.random_range(0..6) {
                    0 => f64::from_bits(rng.random()),
                    1 => f64::NAN,
                    2 => -0.0,
                    3 => rng.random_range(-100..100) as f64 / 100.0,
                    4 => x,
                    _ => (rng.random::<i64>() >> rng.random_range(0..64)) as f64,
                },
                _ => f64::from_bits(rng.random::<u64>() & 0xFFF0_0000_0000_00FF),
            })
            .collect()
    }

    #[test]
    fn roundtrip_random_series() {
        let (seed, mut rng) = seeded();
        for round in 0..3_000 {
            let n = rng.random_range(0..40);
            let ts = random_ts(&mut rng, n);
            let values = random_values(&mut rng, n);
            let samples = zip_ts(&ts, values);
            let result = std::panic::catch_unwind(|| roundtrip(&samples));
            assert!(result.is_ok(), "seed {seed}, round {round}: {samples:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let (seed, mut rng) = seeded();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for (_, series) in vitals(&mut rng, 60) {
            chunks.push(roundtrip(&series));
        }
        for _ in 0..20 {
            let n = rng.random_range(1..30);
            let ts = random_ts(&mut rng, n);
            chunks.push(roundtrip(&zip_ts(&ts, random_values(&mut rng, n))));
        }
        for chunk in &chunks {
            for cut in 0..chunk.len() {
                assert!(
                    decode(&chunk[..cut]).is_err(),
                    "seed {seed}: truncation accepted"
                );
            }
            for _ in 0..50 {
                let mut bad = chunk.clone();
                let i = rng.random_range(0..bad.len());
                bad[i] ^= 1 << rng.random_range(0..8);
                let _ = decode(&bad);
                let _ = header(&bad);
            }
        }
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut bad: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && !bad.is_empty() {
                bad[0] = VERSION;
            }
            let _ = decode(&bad);
            let _ = header(&bad);
        }
    }

    #[test]
    fn forged_count_is_rejected_before_allocating() {
        let mut forged = vec![VERSION];
        put_uvarint(&mut forged, u64::from(u32::MAX));
        put_svarint(&mut forged, 0);
        put_svarint(&mut forged, 0);
        forged.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(matches!(decode(&forged), Err(CodecError::Corrupt(_))));
        assert_eq!(header(&forged).map(|h| h.count).ok(), Some(u32::MAX));
    }

    #[test]
    fn densest_chunk_respects_count_bound() {
        // Perfectly regular and constant: as cheap per sample as the format gets.
        let samples: Vec<(i64, f64)> = (0..50_000).map(|i| (i * 1_000, 0.0)).collect();
        let bytes = roundtrip(&samples);
        let stream = bytes.len() - 10;
        println!("densest: {} samples/stream byte", samples.len() / stream);
        assert!(samples.len() < stream * MAX_SAMPLES_PER_STREAM_BYTE);
    }

    #[test]
    fn bytes_per_sample_report() {
        const CHUNKS: usize = 10;
        let (_, mut rng) = seeded();
        for chunk_len in [120, 240] {
            let mut total = (0usize, 0usize);
            let mut per_kind: Vec<(&str, usize, usize)> = Vec::new();
            for _ in 0..CHUNKS {
                for (kind, series) in vitals(&mut rng, chunk_len) {
                    let bytes = roundtrip(&series).len();
                    match per_kind.iter_mut().find(|k| k.0 == kind) {
                        Some(k) => (k.1, k.2) = (k.1 + bytes, k.2 + series.len()),
                        None => per_kind.push((kind, bytes, series.len())),
                    }
                    total = (total.0 + bytes, total.1 + series.len());
                }
            }
            for (kind, bytes, samples) in &per_kind {
                println!(
                    "chunk {chunk_len}: {kind:>10} {:.3} B/sample",
                    *bytes as f64 / *samples as f64
                );
            }
            let overall = total.0 as f64 / total.1 as f64;
            println!("chunk {chunk_len}: {:>10} {overall:.3} B/sample", "overall");
            assert!(
                overall < 4.0,
                "{overall} B/sample at chunk length {chunk_len}"
            );
            let (rate_bytes, rate_samples) = per_kind
                .iter()
                .find(|k| k.0 == "net_rate")
                .map_or((0, 0), |k| (k.1, k.2));
            let others = (total.0 - rate_bytes) as f64 / (total.1 - rate_samples) as f64;
            println!("chunk {chunk_len}: {:>10} {others:.3} B/sample", "non-rate");
            assert!(others < 2.0, "{others} B/sample without rates");
        }
        // Other timestamp patterns, with a constant value so only timestamps cost.
        let mut t = 1_760_000_000_000;
        let accumulating: Vec<i64> = (0..240)
            .map(|_| {
                t += 10_000 + rng.random_range(0..=20);
                t
            })
            .collect();
        let mut with_gap = vitals_ts(&mut rng, 240);
        with_gap[120..].iter_mut().for_each(|t| *t += 86_400_000);
        let mut slower = vitals_ts(&mut rng, 240);
        for i in 120..240 {
            slower[i] = slower[119] + (i as i64 - 119) * 30_000 + rng.random_range(-5..=5);
        }
        for (name, ts) in [
            ("sleep-after-scrape ts", accumulating),
            ("1-day gap ts", with_gap),
            ("10 s -> 30 s ts", slower),
        ] {
            let per_sample = roundtrip(&zip_ts(&ts, std::iter::repeat(1.0))).len() as f64 / 240.0;
            println!("chunk 240: {name:>22} {per_sample:.3} B/sample");
            assert!(per_sample < 1.0, "{name}: {per_sample} B/sample");
        }
    }
}
