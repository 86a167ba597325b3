from tradingd.cli import main

raise SystemExit(main())
