from whisper_engines.cli import main

raise SystemExit(main())
