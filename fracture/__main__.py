from fracture.cli import main

main()
