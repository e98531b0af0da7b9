"""`duplex chat` argument parsing and start-up."""

from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    from cli.run import add_model_args

    p = sub.add_parser("chat", help="talk to the model in the terminal (microphone + speakers)",
                       description="A terminal UI: live transcript, level meters, latency and dropped-frame stats. "
                                   "Keys: m mute, i send the --camera image again (stills), q quit.")
    p.add_argument("--input-device", help="sounddevice input device (name or index; see --list-devices)")
    p.add_argument("--output-device", help="sounddevice output device (name or index)")
    p.add_argument("--list-devices", action="store_true", help="print audio devices and exit")
    p.add_argument("--input-file", help="use an audio file as the microphone (no audio hardware needed)")
    p.add_argument("--output-file", help="record the model's audio to this WAV file instead of playing it")
    p.add_argument("--camera", metavar="DEVICE|FILE",
                   help="what the model sees (vision models): a webcam (0 or /dev/video0 on Linux, an index or name "
                        "on macOS/Windows), a video file looped as a live camera, or a still image")
    p.add_argument("--no-aec", action="store_true",
                   help="turn off echo cancellation of the model's own voice (on by default when the model plays "
                        "on a device; headphones do not need it)")
    p.add_argument("--seed", type=int, default=None)
    add_model_args(p)
    p.set_defaults(handler=_chat)


def _device(value: str | None):
    return int(value) if value is not None and value.isdigit() else value


def _chat(args) -> int:
    from agent.errors import UserFacingError
    from frontends.tui.audio_io import FileIO, SoundDeviceIO, list_devices

    if args.list_devices:
        print(list_devices())
        return 0
    try:
        from frontends.tui.app import ChatApp
    except ImportError as exc:
        raise UserFacingError("`duplex chat` needs textual: pip install 'duplex-agent[tui]'") from exc
    if args.input_file:
        audio = FileIO(args.input_file, args.output_file)
    else:
        if args.output_file:
            raise UserFacingError("--output-file works with --input-file (otherwise audio plays on the speakers)")
        try:
            audio = SoundDeviceIO(_device(args.input_device), _device(args.output_device), aec=not args.no_aec)
        except ImportError as exc:
            raise UserFacingError(f"{exc}\n  Or run without it: duplex chat --no-aec (use headphones)") from exc
        except RuntimeError as exc:
            raise UserFacingError(
                f"{exc}\n  Without audio hardware use --input-file user.wav --output-file reply.wav") from exc
    from agent import Agent
    from agent.registry import resolve
    from cli.run import agent_config

    resolve(args.model)  # fail early, before the terminal switches to the UI, with the registry's message
    camera = None
    if args.camera:
        from frontends.tui.camera import CameraError, CameraSource

        try:
            camera = CameraSource(args.camera)
        except CameraError as exc:
            raise UserFacingError(str(exc)) from exc

    def factory():
        return Agent.from_pretrained(args.model, agent_config(args, max_sessions=1))

    ChatApp(factory, audio, seed=args.seed, camera=camera).run()
    return 0
