"""A source-filter vocoder codec: speech parameters per 20 ms, vector-quantized per 80 ms frame.

Why it exists: a neural codec small enough to train on a 2-core CPU in minutes did not carry words (whisper
understood nothing of its round trip at 400-800 bit/s). Speech's own structure does most of the work here:
every 20 ms the encoder measures the spectral envelope (log mel band energies), the pitch and how voiced the
sound is; each 80 ms frame (four such vectors) is quantized by a residual VQ whose codebooks are learnt by
k-means on the training dialogues (`duplex train codec --kind vocoder`). The decoder rebuilds a pulse train at
the pitch plus noise, shapes it with the envelope, and overlap-adds 40 ms grains.

Same interface as the neural `Codec` (`StreamingCodec`: 24 kHz, 12.5 Hz frames of 1920 samples, streaming state
per batch slot, offline = streaming over a fresh state), so the engine, the slot pool and the LM training use
either.
Decoded audio lags the input by one 20 ms hop (the overlap-add waits for the next grain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from models.codec.base import StreamingCodec, check_codebooks
from models.codec.semantic import SemanticConfig, SemanticEncoder
from models.state import StreamState, reset_rows


@dataclass
class VocoderConfig:
    sample_rate: int = 24_000
    frame_rate: float = 12.5
    hop: int = 480  # 20 ms parameter rate
    n_mels: int = 32
    n_fft: int = 1024
    fmin: float = 50.0
    fmax: float = 11_000.0
    f0_min: float = 60.0
    f0_max: float = 400.0
    voiced_below: float = 4000.0  # voiced frames mix pulses below this frequency, mostly noise above
    contrast: float = 0.0  # decoder post-filter: log band energies pushed this far from their local mean
    contrast_bands: int = 5  # width of that local mean, in mel bands
    n_q: int = 8
    bins: int = 256
    num_codebooks: int = 8
    noise_seconds: float = 2.0
    # the ears' semantic token after the n_q acoustic codes (`models.codec.semantic`; SemanticConfig fields), or
    # None; the codec then has n_q + 1 codebooks and encodes the token when num_codebooks is n_q + 1
    semantic: dict | None = None

    @property
    def max_codebooks(self) -> int:
        return self.n_q + (1 if self.semantic else 0)

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def window(self) -> int:
        return 2 * self.hop

    @property
    def subframes(self) -> int:
        if self.frame_size % self.hop:
            raise ValueError("the frame size must be a multiple of the hop")
        return self.frame_size // self.hop

    @property
    def features(self) -> int:
        """Per 20 ms: n_mels log energies, log f0, voicing."""
        return self.n_mels + 2

    @property
    def frame_dim(self) -> int:
        return self.subframes * self.features

    def with_codebooks(self, n: int) -> VocoderConfig:
        return replace(self, num_codebooks=n)


def mel_filterbank(cfg: VocoderConfig, n_fft: int) -> torch.Tensor:
    """Triangular mel filters [n_mels, n_fft // 2 + 1]."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    lo, hi = mel(cfg.fmin), mel(cfg.fmax)
    pts = [700.0 * (10 ** ((lo + (hi - lo) * i / (cfg.n_mels + 1)) / 2595.0) - 1.0) for i in range(cfg.n_mels + 2)]
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * cfg.sample_rate / n_fft
    fb = torch.zeros(cfg.n_mels, freqs.numel(), dtype=torch.float64)
    for i in range(cfg.n_mels):
        left, centre, right = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = torch.clamp(torch.minimum((freqs - left) / (centre - left), (right - freqs) / (right - centre)), min=0)
    return fb.float()


def nearest_code(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of `book` [bins, D] for each vector of x [..., D] (squared Euclidean)."""
    dist = x.square().sum(-1, keepdim=True) - 2 * x @ book.T + book.square().sum(-1)
    return dist.argmin(-1)


@dataclass
class VocoderState(StreamState):
    """Per-slot streaming state: the encoder's last half window, the decoder's pulse phase, its position in the
    noise table, the last 20 ms of excitation and the overlap-add tail."""

    history: torch.Tensor  # [B, hop] input samples before this frame
    phase: torch.Tensor  # [B] pulse-train phase in periods, in [0, 1)
    noise_pos: torch.Tensor  # [B] int64
    excitation: torch.Tensor  # [B, 2, hop] last hop of (pulses, noise)
    tail: torch.Tensor  # [B, hop] overlap-add carried into the next frame
    semantic: list[torch.Tensor] = field(default_factory=list)  # the semantic encoder's conv histories

    @property
    def batch_size(self) -> int:
        return self.history.shape[0]


class VocoderCodec(StreamingCodec):
    def __init__(self, cfg: VocoderConfig | None = None):
        super().__init__()
        cfg = cfg or VocoderConfig()
        check_codebooks(cfg.num_codebooks, cfg.max_codebooks)
        self.cfg = cfg
        hop, win = cfg.hop, cfg.window
        fb = mel_filterbank(cfg, cfg.n_fft)
        self.register_buffer("analysis_fb", fb / fb.sum(1, keepdim=True).clamp(min=1e-8), persistent=False)
        self.register_buffer("analysis_window", torch.hann_window(win, periodic=False), persistent=False)
        # the decoder's grains are 2 hops long, zero-padded to at least 4 hops (less circular aliasing from the
        # filter); a power of two, which every runtime transforms as an FFT (ONNX Runtime's DFT of other lengths
        # is a plain O(n^2) sum)
        self.synth_fft = 1 << (4 * hop - 1).bit_length()
        fb_s = mel_filterbank(cfg, self.synth_fft).T  # [bins, n_mels]
        self.register_buffer("synth_fb", fb_s / fb_s.sum(1, keepdim=True).clamp(min=1e-3), persistent=False)
        self.register_buffer("synth_window", torch.hann_window(win, periodic=True).sqrt(), persistent=False)
        freqs = torch.arange(self.synth_fft // 2 + 1) * cfg.sample_rate / self.synth_fft
        self.register_buffer("voiced_share", torch.where(freqs < cfg.voiced_below, 1.0, 0.3), persistent=False)
        gen = torch.Generator().manual_seed(1234)
        self.register_buffer("noise_table", torch.randn(int(cfg.noise_seconds * cfg.sample_rate), generator=gen),
                             persistent=False)
        # the learnt part: feature normalization and the residual codebooks (k-means, `duplex train codec`)
        self.register_buffer("feature_mean", torch.zeros(cfg.frame_dim))
        self.register_buffer("feature_scale", torch.ones(cfg.frame_dim))
        self.register_buffer("codebooks", torch.zeros(cfg.n_q, cfg.bins, cfg.frame_dim))
        self.semantic = None
        if cfg.semantic:
            scfg = SemanticConfig(**cfg.semantic)
            if scfg.bins != cfg.bins or scfg.input_dim != cfg.frame_dim:
                raise ValueError(f"the semantic encoder needs {cfg.bins} bins over {cfg.frame_dim}-dim frames, "
                                 f"got {scfg.bins} over {scfg.input_dim}")
            self.semantic = SemanticEncoder(scfg)

    @property
    def max_codebooks(self) -> int:
        return self.cfg.max_codebooks

    @property
    def semantic_codebooks(self) -> int:
        return 1 if self.semantic is not None and self.cfg.num_codebooks > self.cfg.n_q else 0

    @property
    def bins(self) -> int:
        return self.cfg.bins

    @property
    def delay(self) -> int:
        """Samples by which decoded audio lags the input: one hop (the overlap-add waits for the next grain)."""
        return self.cfg.hop

    @property
    def device(self) -> torch.device:
        return self.codebooks.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codebooks.dtype

    def init_state(self, batch: int = 1, device: torch.device | None = None, chunk: int = 16) -> VocoderState:
        device = device or self.device
        hop = self.cfg.hop
        return VocoderState(history=torch.zeros(batch, hop, device=device),
                            phase=torch.zeros(batch, device=device),
                            noise_pos=torch.zeros(batch, dtype=torch.long, device=device),
                            excitation=torch.zeros(batch, 2, hop, device=device),
                            tail=torch.zeros(batch, hop, device=device),
                            semantic=self.semantic.init_state(batch, device) if self.semantic is not None else [])

    # -- analysis ---------------------------------------------------------------------------------
    def analyse(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [..., 2 * hop] -> features [..., n_mels + 2] (log mel energies, log f0, voicing)."""
        spec = torch.fft.rfft(windows * self.analysis_window, self.cfg.n_fft).abs().square()
        mel = torch.log(spec @ self.analysis_fb.T + 1e-7)
        f0, voicing = self._pitch(windows)
        return torch.cat([mel, torch.log(f0)[..., None], voicing[..., None]], -1)

    def _pitch(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized autocorrelation pitch: the first lobe reaching 0.85 of the best peak (avoids octave drops),
        its maximum refined between lags by a parabola."""
        cfg = self.cfg
        n = windows.shape[-1]
        y = windows - windows.mean(-1, keepdim=True)
        # float64: two runtimes' float32 transforms round differently, which could move a near-tie between lags
        # (ONNX Runtime vs PyTorch); in float64 they agree
        m = 1 << (2 * n - 1).bit_length()  # >= 2n - 1: the circular autocorrelation is the linear one for lags < n
        ac = torch.fft.irfft(torch.fft.rfft(y.double(), m).abs().square(), m)[..., :n].to(y.dtype)
        energy = F.pad(y.square().cumsum(-1), (1, 0))  # energy[..., k] = sum of y[:k]
        total = energy[..., -1:]
        lags = torch.arange(n, device=y.device)
        head = energy[..., n - lags]  # energy of y[0 : n - lag]
        tail = total - energy[..., lags]  # energy of y[lag : n]
        r = ac / torch.sqrt(head * tail).clamp(min=1e-9)
        lo, hi = int(cfg.sample_rate / cfg.f0_max), int(cfg.sample_rate / cfg.f0_min)
        r = r[..., lo:hi]
        best = r.max(-1, keepdim=True).values
        first = (r >= 0.85 * best).to(torch.int8).argmax(-1, keepdim=True)
        # the peak of that first lobe (within a quarter period)
        idx = torch.arange(r.shape[-1], device=r.device)
        lobe = (idx >= first) & (idx + lo <= (first + lo) * 1.25)
        lag = torch.where(lobe, r, torch.full_like(r, -2.0)).argmax(-1, keepdim=True)
        peak = r.gather(-1, lag)[..., 0]
        left = r.gather(-1, (lag - 1).clamp(min=0))[..., 0]
        right = r.gather(-1, (lag + 1).clamp(max=r.shape[-1] - 1))[..., 0]
        curve = left - 2 * peak + right
        shift = torch.where(curve < 0, 0.5 * (left - right) / curve.clamp(max=-1e-9), torch.zeros_like(curve))
        f0 = cfg.sample_rate / (lag[..., 0] + lo + shift.clamp(-0.5, 0.5))
        voicing = ((peak - 0.35) / 0.4).clamp(0, 1)
        voicing = torch.where(total[..., 0] < 1e-6 * n, torch.zeros_like(voicing), voicing)
        f0 = torch.where(voicing > 0, f0, torch.full_like(f0, 120.0))
        return f0, voicing

    # -- quantization -----------------------------------------------------------------------------
    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames - self.feature_mean) * self.feature_scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.feature_scale + self.feature_mean

    def quantize(self, z: torch.Tensor, n_q: int) -> torch.Tensor:
        """z [B, T, D] -> codes [B, n_q, T] by greedy residual nearest neighbours."""
        residual = z
        codes = []
        for q in range(n_q):
            book = self.codebooks[q]
            idx = nearest_code(residual, book)
            codes.append(idx)
            residual = residual - book[idx]
        return torch.stack(codes, 1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> z [B, T, D]."""
        z = 0
        for q in range(min(codes.shape[1], self.cfg.n_q)):  # a semantic token (last) carries no sound
            z = z + self.codebooks[q][codes[:, q].long()]
        return z

    # -- streaming --------------------------------------------------------------------------------
    def features_step(self, wav: torch.Tensor, state: VocoderState) -> torch.Tensor:
        """wav [B, T] (T a multiple of hop) -> features [B, T / hop, n_mels + 2]. Advances `state.history`."""
        x = torch.cat([state.history, wav], -1)
        state.history.copy_(x[:, -self.cfg.hop:])
        return self.analyse(x.unfold(-1, self.cfg.window, self.cfg.hop))

    def encode_step(self, wav: torch.Tensor, state: VocoderState) -> torch.Tensor:
        """wav: [B, 1, k*frame_size] -> codes [B, num_codebooks, k]. Advances `state`."""
        wav = self._check_frames(wav)[:, 0]
        return self.encode_features(self.features_step(wav, state), state)

    def encode_features(self, feats: torch.Tensor, state: VocoderState | None = None) -> torch.Tensor:
        """features [B, k * subframes, n_mels + 2] -> codes [B, num_codebooks, k]: the quantizing half of
        `encode_step`, for features changed between analysis and quantization (training's drawn speakers).
        The semantic token (when num_codebooks counts it) steps `state.semantic`; no state: a fresh one."""
        frames = feats.reshape(feats.shape[0], feats.shape[1] // self.cfg.subframes, self.cfg.frame_dim)
        z = self.normalize(frames)
        codes = self.quantize(z, min(self.num_codebooks, self.cfg.n_q))
        if not self.semantic_codebooks:
            return codes
        tokens = self.semantic.tokens(z, state.semantic if state is not None else None)
        return torch.cat([codes, tokens[:, None]], 1)

    def decode_step(self, codes: torch.Tensor, state: VocoderState) -> torch.Tensor:
        """codes: [B, K, k] -> wav [B, 1, k*frame_size] (20 ms behind the input). Advances `state`."""
        self._check_codes(codes)
        frames = self.denormalize(self.dequantize(codes))
        feats = frames.reshape(codes.shape[0], -1, self.cfg.features)
        return self.synthesize_step(feats, state)[:, None]

    def synthesize_step(self, feats: torch.Tensor, state: VocoderState) -> torch.Tensor:
        """features [B, N, n_mels + 2] -> wav [B, N * hop]: one 40 ms grain per 20 ms, overlap-added."""
        cfg, hop = self.cfg, self.cfg.hop
        B, N, _ = feats.shape
        mel = self.enhance(feats[..., : cfg.n_mels])
        # f0 and the pulse phase in float64: a pulse falls where the phase crosses an integer, and float32 carries
        # ~1e-4 of a period of rounding over a frame (exp's last bit, the running sum): enough for two runtimes
        # (ONNX Runtime vs PyTorch) to place a pulse one sample apart now and then; in float64, ~1e-12.
        f0 = torch.exp(feats[..., cfg.n_mels].double()).clamp(cfg.f0_min * 0.8, cfg.f0_max * 1.25)
        voicing = feats[..., cfg.n_mels + 1].clamp(0, 1)
        # excitation: a continuous-phase pulse train (unit mean power) and a deterministic noise table
        step = (f0 / cfg.sample_rate).repeat_interleave(hop, dim=1)  # [B, N*hop] periods per sample
        phase = state.phase.double()[:, None] + step.cumsum(1)
        pulses = ((torch.floor(phase) > torch.floor(phase - step)) * step.rsqrt()).to(feats.dtype)
        state.phase.copy_((phase[:, -1] - torch.floor(phase[:, -1])).to(state.phase.dtype))
        table = self.noise_table
        idx = (state.noise_pos[:, None] + torch.arange(N * hop, device=feats.device)) % table.numel()
        noise = table[idx]
        state.noise_pos.copy_((state.noise_pos + N * hop) % table.numel())
        exc = torch.cat([state.excitation, torch.stack([pulses, noise], 1)], -1)  # [B, 2, (N+1)*hop]
        state.excitation.copy_(exc[..., -hop:])
        grains = exc.unfold(-1, cfg.window, hop) * self.synth_window  # [B, 2, N, 2*hop]
        # complex spectra as (real, imaginary) pairs: the same arithmetic, and exportable to ONNX
        # (in float64 for the same reason as the pitch's transforms)
        spectra = torch.view_as_real(torch.fft.rfft(grains.double(), self.synth_fft))  # [B, 2, N, bins, 2]
        mix = voicing[..., None] * self.voiced_share  # [B, N, bins]
        power = torch.exp(mel) @ self.synth_fb.T  # [B, N, bins] power per bin of the analysed window
        gain = torch.sqrt(power / self.analysis_window.square().sum())
        spectrum = mix.sqrt()[..., None] * spectra[:, 0] + (1 - mix).sqrt()[..., None] * spectra[:, 1]
        spectrum = torch.complex(spectrum[..., 0] * gain, spectrum[..., 1] * gain)
        out = torch.fft.irfft(spectrum, self.synth_fft)[..., : cfg.window].to(feats.dtype) * self.synth_window
        first, second = out[..., :hop], out[..., hop:]
        regions = F.pad(first, (0, 0, 0, 1)) + F.pad(second, (0, 0, 1, 0))  # [B, N+1, hop]
        regions[:, 0] += state.tail
        state.tail.copy_(regions[:, -1])
        return regions[:, :-1].reshape(B, N * hop)

    def enhance(self, mel: torch.Tensor) -> torch.Tensor:
        """Spectral contrast post-filter (as speech codecs' formant post-filters do): quantization averages
        envelopes, which flattens formant peaks; pushing each band away from its neighbours' mean restores
        them, and each 20 ms vector keeps its total energy."""
        if self.cfg.contrast <= 0:
            return mel
        k = self.cfg.contrast_bands
        flat = mel.reshape(-1, 1, mel.shape[-1])
        local = F.avg_pool1d(F.pad(flat, (k // 2, k // 2), mode="replicate"), k, 1).reshape(mel.shape)
        out = mel + self.cfg.contrast * (mel - local)
        return out + (torch.logsumexp(mel, -1, keepdim=True) - torch.logsumexp(out, -1, keepdim=True))

    def reset_decoder(self, state: VocoderState, mask: torch.Tensor) -> None:
        """Restart the decoding half of `state` for the masked rows (the encoder's history keeps running)."""
        for t in (state.phase, state.noise_pos, state.excitation, state.tail):
            reset_rows(t, mask)
