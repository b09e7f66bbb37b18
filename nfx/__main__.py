from nfx.cli import main

main()
