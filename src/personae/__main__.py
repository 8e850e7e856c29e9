from personae.cli.main import main

raise SystemExit(main())
