from mailstack.services.common.cli import main

raise SystemExit(main())
